"""Summarize (or run any text -> text model on) source texts with a text-conditioned pipeline.

    python scripts/summarize.py --model runs/xsum-diffusion/pipeline --input ../shared/data/xsum/dev.jsonl \
        --text-column document --reference-column summary --num-candidates 5 --guidance-scale 2
"""

import sys

from latentdlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["summarize", *sys.argv[1:]]))
