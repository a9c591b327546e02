"""What every run shares: flags and the one-line errors (`cli`), the workdir with resumable
stages (`workdir`), config checks, variants and sweeps, plots and the HTML report, and the
run-side helpers (`common`)."""
