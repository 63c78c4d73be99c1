"""Change points of a multivariate series: where the phases of a job begin and end.

Two implementations share this description: the Cython kernel `_changepoint` and its
pure-Python twin `changepoint_py`; `para.cython_ext.load("changepoint")` picks one.

PELT (Killick, Fearnhead and Eckley 2012, "Optimal detection of changepoints with a linear
computational cost", JASA 107:500) with the Gaussian change-in-mean cost: a segment (a, b]
costs the sum over dimensions of its squared deviations from its own mean, and each segment
costs `penalty` more.  PELT finds the segmentation of least total cost exactly, pruning
candidate starts that can never win again, so it runs in about linear time when the series
has phases.  Scale the dimensions first (para divides each by its noise level) so that one
penalty fits them all.
"""

def segment(data: object, n: int, d: int, *, penalty: float, min_size: int = 2) -> list[int]:
    """Ends of the segments of `data` (n rows of d float64 values, row after row, any
    object with the buffer protocol), in order; the last end is n.  No segment is shorter
    than `min_size` rows (except the whole series when n < min_size).  Raises ValueError
    when the buffer does not hold n * d values or penalty is negative or not finite.
    """
