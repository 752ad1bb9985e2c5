"""report: the results as pictures, one offline HTML page and the headline metrics
-> plots/report/*.svg, reports/results.html, metrics/headline.json"""
from fractal.records import write_json
from fractal.report import headline, load_results, write_figures, write_page

results = load_results()
figures = write_figures(results, "plots/report")
write_page("reports/results.html", results, figures)
write_json("metrics/headline.json", headline(results))
print(f"report: {len(figures)} pictures in plots/report, the page in reports/results.html")
