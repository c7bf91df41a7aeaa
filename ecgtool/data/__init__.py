"""Files shipped with ecgtool: example records (PTB-XL, CC BY 4.0) and the default model."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples" / "ptbxl"
