"""osnas: find where instance normalisation belongs in OSNet for cross-domain person re-ID."""

__version__ = "0.1.0"
