"""Train a paragraph autoencoder; run with `accelerate launch` or plain `python`.

    accelerate launch scripts/train_autoencoder.py --config configs/autoencoder/tiny.yaml [key=value ...]
"""

import sys

from latentdlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-autoencoder", *sys.argv[1:]]))
