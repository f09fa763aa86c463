"""Encode a corpus's units into the latent cache; run with `accelerate launch` (every process encodes an even share
of the shards) or plain `python`. A killed run resumes from the shards it finished.

    accelerate launch --num_processes 2 scripts/encode_corpus.py --autoencoder runs/x/autoencoder --source corpus.jsonl
"""

import sys

from latentdlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["encode", *sys.argv[1:]]))
