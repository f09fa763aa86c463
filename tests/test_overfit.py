"""A tiny autoencoder must be able to memorise a few paragraphs exactly: the latent carries the text."""

import torch
from helpers import tiny_train_config

from latentdlm.autoencoder.build import build_autoencoder
from latentdlm.autoencoder.objective import ObjectiveConfig, autoencoder_loss, latent_usage_gap
from latentdlm.data.sources import load_texts

PARAGRAPHS = [
    "A Wolf had been gorging on an animal he had killed.",
    "The Crane put its long neck down the throat of the Wolf.",
    "A Cat heard that the Birds in an aviary were ailing.",
    "The Hare was once boasting of his speed before the other animals.",
]


def test_tiny_autoencoder_overfits_paragraphs_to_exact_reconstruction():
    torch.manual_seed(0)
    cfg = tiny_train_config().model
    cfg.segmentation.mode = "none"
    model = build_autoencoder(cfg, load_texts("bundled:aesop"))
    tokens = model.processor.tokenize(PARAGRAPHS)
    batch = model.processor.collate(tokens.encoder_ids, tokens.decoder_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    objective = ObjectiveConfig(kl_weight=1e-4, kl_anneal_steps=100, word_dropout=0.3)
    model.train()
    first = None
    for step in range(300):
        loss = autoencoder_loss(model, batch, objective, step)["loss"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert loss.item() < first / 10
    assert model.reconstruct(PARAGRAPHS) == PARAGRAPHS
    # the text comes from the latent, not from a memorised prior: swapped latents decode to swapped texts
    encoded = model.encode(PARAGRAPHS)
    encoded.latents = encoded.latents.roll(1, dims=0)
    assert model.decode(encoded) == PARAGRAPHS[-1:] + PARAGRAPHS[:-1]
    assert latent_usage_gap(model, batch) > 0.3  # NLL rises by > 0.3 nats/token without it
