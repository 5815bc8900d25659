"""wholebody-zoo: re-measure mmpose's published whole-body results instead of trusting them.

Data flows one way: manifest -> fetch -> data -> evaluate -> metrics -> compare -> report.
"""

__version__ = "0.1.0"
