"""``vggproto reproduce``: the paper's experimental protocol (Sect. 4, Tables 3-6) as one resumable plan of
vggproto commands: the scale mapping and the steps (:mod:`.plan`), running them with done-markers so a rerun
skips what is complete and unchanged (:mod:`.runner`), the tables and their JSON (:mod:`.tables`), the paper's
claims and their verdicts (:mod:`.claims`) and the picture (:mod:`.picture`).

Every step is a subprocess running a ``vggproto`` command (``generate``, ``convert-imageset``, ``train``,
``evaluate``), so this package imports none of the torch-side packages; the command lines go to ``plan.sh``.

May import: everything up to viz.  Only commands and the CLI import it.
"""
