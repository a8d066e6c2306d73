"""Command-line flags (read by the WebUI before it parses the command line)."""

import os

from modules import paths


def preload(parser):
    parser.add_argument(
        "--videoelevator-models-dir", type=str, default=None,
        help=f"folder of VideoElevator T2V models (default: {os.path.join(paths.models_path, 'VideoElevator')})",
    )
