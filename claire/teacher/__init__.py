"""The teacher: questions from benchmark sources go to a teacher model; verified traces become a dataset."""
