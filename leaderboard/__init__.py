"""Leaderboard: validates result files and renders Markdown, HTML and plots."""
