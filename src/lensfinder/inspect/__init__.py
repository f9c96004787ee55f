"""A ranked catalogue and its cutouts in, people's grades out: the grading web app, its SQLite grades database,
the graded table with grader agreement, a gallery of the A/B lenses, and a labelled folder for fine-tuning."""
