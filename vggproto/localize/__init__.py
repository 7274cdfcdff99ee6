"""Localisation (Sect. 4 of the paper's appendix A): box geometry (:mod:`.boxes`), per-image box prediction and
merging (:mod:`.predict`), the command's image loop and error counting (:mod:`.run`) and synthetic box data for
tests and demos (:mod:`.synthetic`).

May import: everything up to viz.  Only commands and the CLI import it.
"""
