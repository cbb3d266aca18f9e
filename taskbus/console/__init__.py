"""The console's dashboard: `static/` holds its HTML, JS and CSS (and vendored uPlot), served by
the console function at `/` and `/static/`; a package so the files ship in the wheel."""
