"""The try-it page: a browser page in front of the logged model (`python -m pipeline demo`)."""
