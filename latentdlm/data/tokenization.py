"""Train a small byte-level BPE tokenizer in memory, wrapped as a Hugging Face fast tokenizer."""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from latentdlm.errors import LatentDLMError

PAD, BOS, EOS, UNK, MASK = "<pad>", "<s>", "</s>", "<unk>", "<mask>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, MASK]  # ids 0..4, in this order
MODEL_MAX_LENGTH = 512


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2, lowercase: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; encoding adds `<s> ... </s>`, decoding restores the text exactly."""
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise LatentDLMError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE: use at least {len(SPECIAL_TOKENS) + 257}."
        )
    backend = Tokenizer(models.BPE(unk_token=UNK))
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if backend.get_vocab_size() <= len(SPECIAL_TOKENS) + 256:
        raise LatentDLMError("the tokenizer learned no merges: train it on more (non-empty) text.")
    bos_id, eos_id = backend.token_to_id(BOS), backend.token_to_id(EOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} {BOS} $B {EOS}",
        special_tokens=[(BOS, bos_id), (EOS, eos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        mask_token=MASK,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
