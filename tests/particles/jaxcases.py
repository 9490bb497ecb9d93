"""Small problems of every built-in kernel for the JAX backend's tests."""
import numpy as np

from particles.kernels import CircleKernel, GaussianRBF, SigmoidUnit, SphereRBF
from particles.laws import CLaw, YNormal, YUniformCircle, YUniformSphere
from particles.measures import CircleUniform, GaussianMeasure, SphereUniform
from particles.problem import Problem
from particles.targets import FourierTarget, TeacherNetwork


def circle():
    return Problem(kernel=CircleKernel(2.0), measure=CircleUniform(32),
                   target=FourierTarget(cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0]),
                   y_law=YUniformCircle(), c_law=CLaw("normal"))


def _teacher(kernel, y):
    return TeacherNetwork(kernel, y, np.array([1.0, -0.5, 0.8])[: len(y)])


def gaussian():
    k = GaussianRBF(2, 0.8)
    y = np.array([[0.5, 0.0], [-0.5, 0.3], [0.0, -0.7]])
    return Problem(kernel=k, measure=GaussianMeasure(2, 36), target=_teacher(k, y),
                   y_law=YNormal(2), c_law=CLaw("normal"))


def sphere():
    k = SphereRBF(3, 1.0)
    y = k.retract(np.array([[1.0, 0.2, 0.0], [0.0, 1.0, -0.4], [-0.3, 0.0, 1.0]]))
    return Problem(kernel=k, measure=SphereUniform(3, 40, np.random.default_rng(7)),
                   target=_teacher(k, y), y_law=YUniformSphere(3), c_law=CLaw("normal"))


def sigmoid():
    k = SigmoidUnit(2, "sigmoid")
    y = np.array([[1.0, -1.0, 0.2], [0.5, 1.5, -0.3], [-1.2, 0.4, 0.0]])
    return Problem(kernel=k, measure=GaussianMeasure(2, 36), target=_teacher(k, y),
                   y_law=YNormal(3), c_law=CLaw("normal"))


CASES = {"circle": circle, "gaussian": gaussian, "sphere": sphere, "sigmoid": sigmoid}
