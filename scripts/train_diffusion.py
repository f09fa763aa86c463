"""Train the latent DiT on a trained autoencoder; run with `accelerate launch` or plain `python`.

    accelerate launch scripts/train_diffusion.py --config configs/diffusion/tiny.yaml [key=value ...]
"""

import sys

from latentdlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-diffusion", *sys.argv[1:]]))
