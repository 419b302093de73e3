"""Wire and stream messages shared by every part of livefeed (imports nothing of ours)."""
