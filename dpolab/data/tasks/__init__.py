"""Built-in and dataset-specific tasks that produce raw records for :mod:`dpolab.data.dataset`."""
from dpolab.data.tasks import arithmetic

__all__ = ["arithmetic"]
