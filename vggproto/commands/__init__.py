"""CLI commands, one module per area; each module exposes ``commands: list[click.Command]``.

Modules here import heavy dependencies (torch, cv2) inside the command functions, so ``vggproto --help`` and the
format commands start quickly.
"""
