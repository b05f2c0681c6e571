"""Training data: `records` reads examples, `split` holds some out for validation, `templates` formats a
conversation per model family, `encode` turns examples into masked samples, `packing` fills rows with them."""
