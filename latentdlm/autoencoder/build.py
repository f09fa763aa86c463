"""Build a new (untrained) autoencoder from its config: tokenizers first, then the parts."""

from __future__ import annotations

import copy
from typing import Sequence

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from latentdlm.autoencoder.config import AutoencoderConfig
from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.data.tokenization import train_bpe_tokenizer
from latentdlm.errors import LatentDLMError
from latentdlm.hf_parts import PartConfig, pretrained_source


def _pretrained_tokenizer(name_or_path: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(pretrained_source(name_or_path, gguf_file))
    except (OSError, ValueError) as exc:
        raise LatentDLMError(f"cannot load a tokenizer from '{name_or_path}': {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:  # GPT-2 / Llama style: pad with eos (labels mask it out anyway)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _fit_random_part(part: PartConfig, tokenizer: PreTrainedTokenizerBase) -> PartConfig:
    """A randomly initialised part takes its vocabulary and special ids from the tokenizer."""
    if part.name_or_path is not None:
        return part
    part = copy.deepcopy(part)
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if part.kind == "seq2seq":
        ids["decoder_start_token_id"] = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
        ids["forced_eos_token_id"] = None
    part.config = {**part.config, **ids}
    return part


def build_autoencoder(config: AutoencoderConfig, corpus: Sequence[str] = ()) -> ParagraphAutoencoder:
    """Pretrained parts bring their tokenizers; otherwise a BPE is trained on `corpus`."""
    tok = config.tokenizer
    if tok.name_or_path:
        encoder_tokenizer = decoder_tokenizer = _pretrained_tokenizer(tok.name_or_path)
    elif config.encoder.name_or_path and config.decoder.name_or_path:
        encoder_tokenizer = _pretrained_tokenizer(config.encoder.name_or_path)
        decoder_tokenizer = _pretrained_tokenizer(config.decoder.name_or_path, config.decoder.gguf_file)
    elif config.encoder.name_or_path or config.decoder.name_or_path:
        pretrained = config.encoder if config.encoder.name_or_path else config.decoder
        encoder_tokenizer = decoder_tokenizer = _pretrained_tokenizer(pretrained.name_or_path, pretrained.gguf_file)
    else:
        if not corpus:
            raise LatentDLMError("training a tokenizer needs a corpus (or set tokenizer.name_or_path)")
        encoder_tokenizer = decoder_tokenizer = train_bpe_tokenizer(corpus, vocab_size=tok.train_vocab_size)
    config = copy.deepcopy(config)
    config.encoder = _fit_random_part(config.encoder, encoder_tokenizer)
    config.decoder = _fit_random_part(config.decoder, decoder_tokenizer)
    return ParagraphAutoencoder(config, encoder_tokenizer, decoder_tokenizer)
