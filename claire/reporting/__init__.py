"""Reporting: the report's tables and figures, rebuilt from run folders alone."""
