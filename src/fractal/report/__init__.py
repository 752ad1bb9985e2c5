"""The results as a researcher reads them: static SVG pictures, one self-contained HTML page
and a small headline metrics file, made from what the rank and train stages wrote.

Everything here is generic over the rankers metrics/rank.json holds (one colour per ranker,
the same in every picture), and needs no network: matplotlib writes the SVGs, the page
inlines them, and DVC shows them as image plots (no vega from a CDN).

- results.py: reads the stage outputs into one Results (both rank.json layouts);
- figures.py: the pictures;
- page.py: the HTML page and the headline metrics.
"""
from fractal.report.figures import write_figures
from fractal.report.page import headline, write_page
from fractal.report.results import Results, load_results

__all__ = ["Results", "load_results", "write_figures", "write_page", "headline"]
