"""churnseg: customer segmentation and churn-risk scoring as of a cutoff date."""

__version__ = "0.1.0"
