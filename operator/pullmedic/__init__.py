"""pullmedic: find the real cause of image pull failures and heal the workloads behind them."""

__version__ = "0.1.0"
