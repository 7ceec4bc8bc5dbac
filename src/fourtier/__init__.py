"""fourtier: the Four-Tiered Prompts (FTP) framework for video action recognition."""
__version__ = "0.1.0"
