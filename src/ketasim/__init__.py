"""ketasim: a simulator of ketamine for depression, from dose to mood.

Research tool, not medical advice.
"""

__version__ = "0.1.0"
