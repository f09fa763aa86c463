"""The autoencoder's training objective with its anti-collapse and robustness terms.

reconstruction NLL
+ beta(t) * KL with free bits (VAE; beta annealed linearly from 0), as a per-token ELBO:
  (sum over tokens of NLL + beta * sum over units of KL) / number of tokens
+ decoder word dropout (Bowman et al.): decoder inputs replaced by <unk>/<mask> so it must read z
+ Gaussian latent noise, PLANNER's token substitution noise on the encoder input
+ SLD's adversarial latent perturbation and contrastive loss between two noised views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latentdlm.autoencoder.bottleneck import Latents
from latentdlm.autoencoder.model import ParagraphAutoencoder


@dataclass
class ObjectiveConfig:
    # beta weighs each unit's KL (a unit: a sentence segment in segment mode, else the paragraph)
    # against the summed token NLL: the beta of a per-token beta-VAE ELBO,
    #   loss = (sum_tokens NLL + beta * sum_units KL) / num_tokens,
    # so it means the same in segment and paragraph mode. Against the mean token NLL the effective
    # weight is beta / (tokens per unit): ~15 tokens for a sentence, ~60+ for a paragraph.
    kl_weight: float = 2e-3  # ~ the former 1e-4 against the mean NLL, for sentence segments of ~12-28 tokens
    kl_anneal_steps: int = 1000  # beta rises linearly from 0 over these steps
    free_bits: float = 0.0  # nats per latent dimension per unit below which KL is not penalised
    word_dropout: float = 0.0  # probability of hiding each decoder input token
    # decoder_context: probability of hiding a unit's whole context (the previous segments' gold text), so
    # the decoder also learns to write from its latent alone, as it must when its own earlier output misleads it
    context_dropout: float = 0.0
    latent_noise: float = 0.0  # std of Gaussian noise added to latents
    token_noise: float = 0.0  # probability of substituting each encoder input token (PLANNER 0.3)
    adversarial_eps: float = 0.0  # size of the adversarial latent step, relative to the latent norm (SLD ~0.1)
    adversarial_weight: float = 0.0
    contrastive_weight: float = 0.0  # SLD uses 0.2; the views differ by token noise, dropout and VAE sampling
    contrastive_temperature: float = 0.1


def _reconstruction_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def _substitute_tokens(ids: torch.Tensor, mask: torch.Tensor, p: float, vocab_size: int, special_ids: list[int]) -> torch.Tensor:
    """Replace each non-special token with a random one with probability p."""
    hit = (torch.rand(ids.shape, device=ids.device) < p) & mask.bool()
    for special in special_ids:
        hit &= ids != special
    return torch.where(hit, torch.randint_like(ids, vocab_size), ids)


def _hide_decoder_inputs(ids: torch.Tensor, mask: torch.Tensor, p: float, hidden_id: int) -> torch.Tensor:
    hit = (torch.rand(ids.shape, device=ids.device) < p) & mask.bool()
    hit[:, 0] = False  # keep the start token
    return torch.where(hit, torch.full_like(ids, hidden_id), ids)


def _contrastive(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE between two views (B, k, d): each unit must pick its own other view in the batch."""
    a = F.normalize(a.flatten(1), dim=-1)
    b = F.normalize(b.flatten(1), dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def autoencoder_loss(model: ParagraphAutoencoder, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig, step: int) -> dict[str, torch.Tensor]:
    """All terms of one step; `loss` is what to backpropagate, the rest are for logging."""
    enc_tok, dec_tok = model.processor.encoder_tokenizer, model.processor.decoder_tokenizer
    if "latents" in batch:  # fixed latents of a frozen encoder, read from the latent cache
        posterior, noisy = Latents(batch["latents"]), None
    else:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        noisy = lambda: _substitute_tokens(ids, mask, cfg.token_noise, len(enc_tok), enc_tok.all_special_ids)  # noqa: E731
        posterior = model.encode_tokens(noisy() if cfg.token_noise > 0 else ids, mask)
    latents = model.latent_design.perturb(posterior.sample(), cfg.latent_noise)

    decoder_side = dict(batch)  # what the decoder reads, after word and context dropout
    if cfg.word_dropout > 0:
        hidden = next(t for t in (dec_tok.unk_token_id, dec_tok.mask_token_id, dec_tok.pad_token_id, dec_tok.eos_token_id) if t is not None)
        if "stream_tokens" in batch:  # every unit's start token stays
            tokens = batch["stream_tokens"]
            decoder_side["stream_tokens"] = _hide_decoder_inputs(tokens[None], (tokens != model.processor.start_token_id)[None], cfg.word_dropout, hidden)[0]
        else:
            decoder_side["decoder_input_ids"] = _hide_decoder_inputs(batch["decoder_input_ids"], batch["decoder_attention_mask"], cfg.word_dropout, hidden)
    if cfg.context_dropout > 0 and "context_mask" in batch:
        dec_mask = batch["decoder_attention_mask"]
        dropped = torch.rand(dec_mask.shape[0], 1, device=dec_mask.device) < cfg.context_dropout
        decoder_side["decoder_attention_mask"] = dec_mask.masked_fill(batch["context_mask"].to(dec_mask.device) & dropped, 0)  # read as padding

    nll = _reconstruction_nll(model.batch_logits(latents, decoder_side), batch["labels"])
    terms = {"nll": nll}

    kl_dims = posterior.kl_per_dim()  # (k, d), mean over the batch's units
    terms["kl"] = kl_dims.sum()  # nats per unit (logged)
    if posterior.logvar is not None and cfg.kl_weight > 0:
        beta = cfg.kl_weight * min(1.0, step / cfg.kl_anneal_steps) if cfg.kl_anneal_steps > 0 else cfg.kl_weight
        # per-token ELBO: sum_units KL / sum_tokens = (KL per unit) / (mean tokens per unit)
        tokens_per_unit = (batch["labels"] != -100).sum().clamp(min=1) / batch["labels"].shape[0]
        terms["kl_penalty"] = beta * kl_dims.clamp(min=cfg.free_bits).sum() / tokens_per_unit

    if cfg.adversarial_weight > 0 and cfg.adversarial_eps > 0:
        (grad,) = torch.autograd.grad(nll, latents, retain_graph=True)
        direction = F.normalize(grad.flatten(1), dim=-1).view_as(latents)
        scale = cfg.adversarial_eps * latents.detach().flatten(1).norm(dim=-1).view(-1, 1, 1)
        adversarial = latents + (scale * direction).detach()
        terms["adversarial"] = cfg.adversarial_weight * _reconstruction_nll(model.batch_logits(adversarial, decoder_side), batch["labels"])

    if cfg.contrastive_weight > 0 and noisy is not None:
        second_view = model.encode_tokens(noisy() if cfg.token_noise > 0 else ids, mask).sample()
        terms["contrastive"] = cfg.contrastive_weight * _contrastive(posterior.mean, second_view, cfg.contrastive_temperature)

    terms["loss"] = nll + sum(v for k, v in terms.items() if k in ("kl_penalty", "adversarial", "contrastive"))
    return terms


@torch.no_grad()
def latent_usage_gap(model: ParagraphAutoencoder, batch: dict[str, torch.Tensor]) -> float:
    """NLL with latents shuffled across the batch minus NLL with the right ones (0 = latent ignored)."""
    latents = batch["latents"] if "latents" in batch else model.encode_tokens(batch["input_ids"], batch["attention_mask"]).mean
    right = _reconstruction_nll(model.batch_logits(latents, batch), batch["labels"])
    wrong = _reconstruction_nll(model.batch_logits(latents.roll(1, dims=0), batch), batch["labels"])
    return float(wrong - right)


class AutoencoderObjective(nn.Module):
    """The autoencoder with its loss as `forward`, so accelerate/DDP wraps one module that sees the whole step."""

    def __init__(self, autoencoder: ParagraphAutoencoder, config: ObjectiveConfig):
        super().__init__()
        self.autoencoder = autoencoder
        self.config = config

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        return autoencoder_loss(self.autoencoder, batch, self.config, step)
