"""Structured layers and reference models."""

from . import models
from .models import get_model, list_models

__all__ = ["get_model", "list_models", "models"]
