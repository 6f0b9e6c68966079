__version__ = "0.1.0"  # the installed distribution's version wins (prfdn --version)
