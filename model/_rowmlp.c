/* _rowmlp: one row through a fused MLP ensemble, the members' mean, in one C call.

    mean(packed, dims, row) -> float

A single-row prediction is the request a SageMaker endpoint sees most. numpy computes it in 8 calls,
each through numpy's general dispatch, and in a serving worker, where the caches are cold between
requests, those calls cost ~30 us of a ~230 us request (docs/benchmarks.md). This computes the same
sums in one call of ~2.5 us on the default model (~4 us in SSE, x86-64's baseline; the forward pass
is compiled for AVX2 too), and reads only the weights it needs: an input that is 0 (most of a row is
one-hot zeros) and a hidden unit the ReLU set to 0 add nothing, so their weight rows are skipped.

The layout is model/network.py's _numpy_layers, every array float32 and flattened into `packed` in
this order; `dims` = (inputs, members, width, out_2, ..., out_k), widths counting the constant unit
each hidden layer carries:
    first       inputs x width          width = members x (units_1 + 1), every member side by side
    first_bias  width
    middle[j]   members x (units_j + 1) x (out_j + 1)    biases in the constant unit's row
    last        members x (units_k + 1)                  the last layer and the member mean folded in
`row` is a list of `inputs` Python floats, each rounded to float32 as numpy's astype rounds it.

The sums are float32 in another order than BLAS's, so a result may differ from numpy's in the last
bits; FusedEnsemble uses this for every one-row prediction and nothing else, so one row is always
computed the same way. A weight of 0 times an input of 0 is skipped where numpy adds 0 * w: the same
sum for finite weights, which FusedEnsemble checks before it uses this.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* The row and the activations live on the stack: three buffers of this many floats (96 KiB, well
   within a thread's 8 MiB). The module exports it as MAX_WIDTH: FusedEnsemble declines a network with
   more inputs or a wider layer, which read_dims would refuse. */
#define MAX_WIDTH 8192

/* x86-64 with gcc: `forward` for AVX2 and for the baseline (see there); elsewhere, or built with
   -DROWMLP_ONE_TARGET (tests/model/test_rowmlp.py builds one variant per instruction set), the compiler's.
   No AVX-512 clone: it saves ~0.3 us of ~2.7 here, and on the Skylake and Cascade Lake Xeons behind many
   SageMaker instance types 512-bit arithmetic lowers the core's clock for a while after, which every
   request's Python would pay (gcc's own tuning for those CPUs prefers 256-bit vectors for that reason). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(ROWMLP_ONE_TARGET)
#define CLONED __attribute__((target_clones("avx2", "default")))
#else
#define CLONED
#endif

/* np.maximum(v, 0) keeps NaN; so does this (NaN <= 0 is false) */
static inline float relu(float v) { return v <= 0.0f ? 0.0f : v; }

/* into += scale * line: `restrict` lets the compiler vectorise it without checking for overlap at run time */
static inline void add_scaled(long n, float scale, const float *restrict line, float *restrict into)
{
    for (long k = 0; k < n; k++) into[k] += scale * line[k];
}

/* The forward pass over `packed` (laid out as above) for one row of `inputs` floats: the members' mean.
   Compiled once per instruction set and picked at load time (gcc's target_clones): the loops run 4 or 8
   floats at a time. Both clones do the same float operations in the same order (each element of
   add_scaled is one multiply then one add, never fused: -ffp-contract=off in pyproject.toml, and the
   final sum stays a scalar loop), so the answer has the same bits on every x86-64 machine. */
CLONED static float forward(const long *dims, Py_ssize_t n_dims, const float *packed, const float *values)
{
    const long inputs = dims[0], members = dims[1];
    long width = dims[2], units = width / members;
    float one[MAX_WIDTH], other[MAX_WIDTH];
    float *hidden = one, *next = other;
    const float *first = packed, *weights = first + inputs * width;
    memcpy(hidden, weights, sizeof(float) * width);   /* first_bias */
    weights += width;
    for (long i = 0; i < inputs; i++) {
        if (values[i] == 0.0f) continue;
        add_scaled(width, values[i], first + i * width, hidden);
    }
    for (long k = 0; k < width; k++) hidden[k] = relu(hidden[k]);

    for (Py_ssize_t layer = 3; layer < n_dims; layer++) {
        const long out = dims[layer];
        for (long m = 0; m < members; m++) {
            const float *in = hidden + m * units, *block = weights + m * units * out;
            float *result = next + m * out;
            memset(result, 0, sizeof(float) * out);
            for (long j = 0; j < units; j++) {
                const float value = in[j];
                if (value == 0.0f) continue;
                add_scaled(out, value, block + j * out, result);
            }
            for (long k = 0; k < out; k++) result[k] = relu(result[k]);
        }
        weights += members * units * out;
        float *swap = hidden;
        hidden = next;
        next = swap;
        units = out;
        width = members * out;
    }
    float sum = 0.0f;
    for (long k = 0; k < width; k++) sum += hidden[k] * weights[k];
    return sum;
}

static int read_dims(PyObject *dims, Py_ssize_t *n, long *values, Py_ssize_t capacity)
{
    if (!PyTuple_CheckExact(dims)) {
        PyErr_SetString(PyExc_TypeError, "dims must be a tuple of ints");
        return -1;
    }
    *n = PyTuple_GET_SIZE(dims);
    if (*n < 3 || *n > capacity) {
        PyErr_SetString(PyExc_ValueError, "dims holds inputs, members, width and the later layers' widths");
        return -1;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        values[i] = PyLong_AsLong(PyTuple_GET_ITEM(dims, i));
        if (values[i] == -1 && PyErr_Occurred()) return -1;
        if (values[i] < 1 || values[i] > MAX_WIDTH) {
            PyErr_SetString(PyExc_ValueError, "every dim must lie between 1 and 8192");
            return -1;
        }
    }
    if (values[2] % values[1] != 0) {
        PyErr_SetString(PyExc_ValueError, "width must be a multiple of members");
        return -1;
    }
    for (Py_ssize_t i = 3; i < *n; i++) {
        if (values[1] * values[i] > MAX_WIDTH) {
            PyErr_SetString(PyExc_ValueError, "a layer is wider than 8192 units in all");
            return -1;
        }
    }
    return 0;
}

static PyObject *mean(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "mean(packed, dims, row) takes 3 arguments");
        return NULL;
    }
    long dims[64];
    Py_ssize_t n_dims;
    if (read_dims(args[1], &n_dims, dims, 64) < 0) return NULL;
    const long inputs = dims[0], members = dims[1];
    long width = dims[2], units = width / members;

    PyObject *row = args[2];
    if (!PyList_CheckExact(row) || PyList_GET_SIZE(row) != inputs) {
        PyErr_SetString(PyExc_TypeError, "row must be a list of one float per input");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    /* the length the layout needs, against what `packed` holds */
    Py_ssize_t needed = inputs * width + width, layer_units = units;
    for (Py_ssize_t i = 3; i < n_dims; i++) {
        needed += members * layer_units * dims[i];
        layer_units = dims[i];
    }
    needed += members * layer_units;
    if (view.itemsize != 4 || view.format == NULL || strcmp(view.format, "f") != 0
            || view.len != needed * 4) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "packed must be float32 and as long as dims say");
        return NULL;
    }

    float values[MAX_WIDTH];
    for (long i = 0; i < inputs; i++) {
        PyObject *item = PyList_GET_ITEM(row, i);
        if (!PyFloat_CheckExact(item)) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError, "row must be a list of one float per input");
            return NULL;
        }
        values[i] = (float)PyFloat_AS_DOUBLE(item);
    }
    const float sum = forward(dims, n_dims, (const float *)view.buf, values);
    PyBuffer_Release(&view);
    return PyFloat_FromDouble((double)sum);
}

static PyMethodDef methods[] = {
    {"mean", (PyCFunction)(void (*)(void))mean, METH_FASTCALL,
     "mean(packed, dims, row) -> float: the ensemble's mean for one row (see the module's source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rowmlp",
                                    "One row through a fused MLP ensemble in one C call.", -1, methods};

PyMODINIT_FUNC PyInit__rowmlp(void)
{
    PyObject *made = PyModule_Create(&module);
    if (made != NULL && PyModule_AddIntConstant(made, "MAX_WIDTH", MAX_WIDTH) < 0) {
        Py_DECREF(made);
        return NULL;
    }
    return made;
}
