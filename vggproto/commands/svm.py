"""``vggproto svm``: a one-vs-rest linear SVM on ``vggproto extract`` descriptors (Appendix B of the paper);
scikit-learn is the optional ``svm`` extra, imported only when the command runs."""
from __future__ import annotations

import click

from vggproto.commands.options import force_option


@click.command("svm")
@click.argument("features", type=click.Path(exists=True, dir_okay=False))
@click.option("--test", "test", type=click.Path(exists=True, dir_okay=False),
              help="HDF5 of the test set [default: cross-validation on FEATURES].")
@click.option("--C", "c", type=float, default=1.0, show_default=True, help="SVM regularisation constant.")
@click.option("--folds", type=int, default=5, show_default=True, help="Cross-validation folds without --test.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the metrics as JSON.")
@force_option
def svm_command(features: str, test: str | None, c: float, folds: int, json_path: str | None, force: bool) -> None:
    """Accuracy, mean AP and mean class recall of a linear SVM on FEATURES.h5 (from vggproto extract)."""
    from vggproto.evaluation.svm import format_metrics, svm_files
    click.echo(format_metrics(svm_files(features, test=test, c=c, folds=folds, json_path=json_path, force=force)))


commands = [svm_command]
