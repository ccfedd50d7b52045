"""medpipe: from a public medical-imaging dataset to tracked, reproducible results."""

__version__ = "0.1.0"
