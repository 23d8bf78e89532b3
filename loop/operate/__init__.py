"""What operators do to a run: control requests, promotion and rollback, reviews, exports, metrics, summaries."""
