"""A runner replica: claims sessions, runs their inputs, ships transcripts, fails over."""
