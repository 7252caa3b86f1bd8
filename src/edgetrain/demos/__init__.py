"""Runnable demos: ``edgetrain demo`` (the seed walkthrough) and friends."""
