"""NightCity data: layout, labels, exposure, and the data steps."""
