"""lm-eval tasks shipped with Claire; pass PATH as lm-eval's include_path."""

from pathlib import Path

PATH = Path(__file__).parent
