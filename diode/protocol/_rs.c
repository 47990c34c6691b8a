/*
 * diode.protocol._rs: systematic Reed-Solomon erasure coding over GF(2^8).
 *
 * This module owns the field arithmetic, the generator and decode matrices, and the one heavy
 * operation of the codec: multiplying a small matrix of field constants by a set of equal-length
 * symbols ("apply"). diode/protocol/fec.py (RsCodec) chooses the matrices, caches them and maps
 * the ValueErrors raised here to FECError.
 *
 * Field: GF(2^8) modulo x^8 + x^4 + x^3 + x^2 + 1 (0x11d), generator element 2.
 *
 * Code: symbols 0..k-1 are the source symbols; repair symbol i (0 <= i < m) is
 *     repair_i = sum_j C[i][j] * source_j,   C[i][j] = 1 / ((k + i) xor j),
 * a Cauchy matrix (x_i = k + i and y_j = j are distinct field elements as k + m <= 256). Every
 * square submatrix of a Cauchy matrix is invertible, so every k x k submatrix of the systematic
 * generator [I; C] is: any k of the k + m symbols rebuild the block (MDS).
 *
 * Decode: with the source symbols E missing and e = |E| repair symbols R at hand,
 *     p_R = C[R][E] s_E + C[R][P] s_P   (P: the source symbols present)
 * so s_E = A^-1 p_R + A^-1 C[R][P] s_P with A = C[R][E], an e x e Cauchy matrix. These are the
 * rows E of the inverse of the k x k generator submatrix of the symbols used, obtained with an
 * e x e inversion instead of a k x k one: the cost follows the losses, not the block size.
 *
 * Multiplying: a constant c times a byte x is c*(x & 15) xor c*(x & 0xf0), so two 16-entry
 * tables per constant ("nibble tables", 32 bytes: low then high) turn the product into two
 * byte shuffles (PSHUFB), 16 or 32 bytes at a time. The tables of a matrix are laid out
 * column-major, entry (i, j) of a rows x cols matrix at byte 32 * (j * rows + i), so the tables
 * of every output row for one input symbol sit together. Up to 8 output rows are accumulated in
 * registers while the input symbols are read once per group, in column chunks that stay in
 * cache (L1 for up to 64 input symbols). A symbol length that is not a multiple of the vector width ends with one vector
 * overlapping the previous one: each output byte is a complete sum written by a plain store,
 * so writing it twice writes the same value.
 *
 * Kernels: AVX2 (32 bytes), SSSE3 (16 bytes) and portable C (a 64 KiB product table), chosen at
 * import from what the CPU supports (__builtin_cpu_supports) and compiled with function-level
 * target attributes, so one binary runs on any x86-64. "apply" takes an optional kernel name
 * so that tests can check that all kernels agree.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define RS_X86 1
#include <immintrin.h>
#else
#define RS_X86 0
#endif

#define RS_POLY 0x11d
#define RS_MAX_SYMBOLS 256
#define RS_TABLE 32          /* bytes of nibble tables per matrix entry */
#define RS_GROUP 8           /* output rows accumulated in registers at once */
#define RS_CHUNK_BYTES 16384 /* column chunk: input bytes of all symbols per pass */
#define RS_CHUNK_MIN 256     /* ... but at least this much of each symbol */

static uint8_t gf_exp[512];
static uint8_t gf_log[256];
static uint8_t gf_inv[256];
static uint8_t gf_mul[256][256];

static void
gf_init(void)
{
    unsigned x = 1;
    for (int i = 0; i < 255; i++) {
        gf_exp[i] = (uint8_t)x;
        gf_log[x] = (uint8_t)i;
        x <<= 1;
        if (x & 0x100) {
            x ^= RS_POLY;
        }
    }
    for (int i = 255; i < 512; i++) {
        gf_exp[i] = gf_exp[i - 255];
    }
    gf_log[0] = 0; /* never used: zero is handled before any lookup */
    for (int a = 0; a < 256; a++) {
        for (int b = 0; b < 256; b++) {
            gf_mul[a][b] = (a && b) ? gf_exp[gf_log[a] + gf_log[b]] : 0;
        }
    }
    gf_inv[0] = 0;
    for (int a = 1; a < 256; a++) {
        gf_inv[a] = gf_exp[255 - gf_log[a]];
    }
}

/* ---- kernels ------------------------------------------------------------------------------ */

/* out[i][p] = sum_j M[i][j] * in[j][p] for rows i of [r0, r0+n) and bytes p of [begin, end) */
typedef void (*rs_kernel)(const uint8_t *tables, size_t rows, size_t cols, size_t r0, size_t n,
                          const uint8_t *const *in, uint8_t *const *out, size_t begin, size_t end);

static void
scalar_rows(const uint8_t *tables, size_t rows, size_t cols, size_t r0, size_t n,
            const uint8_t *const *in, uint8_t *const *out, size_t begin, size_t end)
{
    for (size_t r = r0; r < r0 + n; r++) {
        uint8_t *dst = out[r];
        memset(dst + begin, 0, end - begin);
        for (size_t j = 0; j < cols; j++) {
            /* the entry's constant is its low table at 1 */
            uint8_t c = tables[RS_TABLE * (j * rows + r) + 1];
            const uint8_t *src = in[j];
            if (c == 0) {
                continue;
            }
            if (c == 1) {
                for (size_t p = begin; p < end; p++) {
                    dst[p] ^= src[p];
                }
                continue;
            }
            const uint8_t *row = gf_mul[c];
            for (size_t p = begin; p < end; p++) {
                dst[p] ^= row[src[p]];
            }
        }
    }
}

#if RS_X86

/* N is a constant at every call site: the accumulators become registers */
#define RS_SSSE3_BODY(N)                                                                        \
    do {                                                                                        \
        const __m128i mask = _mm_set1_epi8(0x0f);                                               \
        for (size_t p = begin; p < end; p += 16) {                                              \
            __m128i acc[N];                                                                     \
            for (int r = 0; r < (N); r++) {                                                     \
                acc[r] = _mm_setzero_si128();                                                   \
            }                                                                                   \
            for (size_t j = 0; j < cols; j++) {                                                 \
                __m128i x = _mm_loadu_si128((const __m128i *)(in[j] + p));                      \
                __m128i lo = _mm_and_si128(x, mask);                                            \
                __m128i hi = _mm_and_si128(_mm_srli_epi64(x, 4), mask);                         \
                const uint8_t *t = tables + RS_TABLE * (j * rows + r0);                         \
                for (int r = 0; r < (N); r++) {                                                 \
                    __m128i tl = _mm_loadu_si128((const __m128i *)(t + RS_TABLE * r));          \
                    __m128i th = _mm_loadu_si128((const __m128i *)(t + RS_TABLE * r + 16));     \
                    acc[r] = _mm_xor_si128(acc[r], _mm_shuffle_epi8(tl, lo));                   \
                    acc[r] = _mm_xor_si128(acc[r], _mm_shuffle_epi8(th, hi));                   \
                }                                                                               \
            }                                                                                   \
            for (int r = 0; r < (N); r++) {                                                     \
                _mm_storeu_si128((__m128i *)(out[r0 + r] + p), acc[r]);                         \
            }                                                                                   \
        }                                                                                       \
    } while (0)

#define RS_AVX2_BODY(N)                                                                         \
    do {                                                                                        \
        const __m256i mask = _mm256_set1_epi8(0x0f);                                            \
        for (size_t p = begin; p < end; p += 32) {                                              \
            __m256i acc[N];                                                                     \
            for (int r = 0; r < (N); r++) {                                                     \
                acc[r] = _mm256_setzero_si256();                                                \
            }                                                                                   \
            for (size_t j = 0; j < cols; j++) {                                                 \
                __m256i x = _mm256_loadu_si256((const __m256i *)(in[j] + p));                   \
                __m256i lo = _mm256_and_si256(x, mask);                                         \
                __m256i hi = _mm256_and_si256(_mm256_srli_epi64(x, 4), mask);                   \
                const uint8_t *t = tables + RS_TABLE * (j * rows + r0);                         \
                for (int r = 0; r < (N); r++) {                                                 \
                    __m256i tl = _mm256_broadcastsi128_si256(                                   \
                        _mm_loadu_si128((const __m128i *)(t + RS_TABLE * r)));                  \
                    __m256i th = _mm256_broadcastsi128_si256(                                   \
                        _mm_loadu_si128((const __m128i *)(t + RS_TABLE * r + 16)));             \
                    acc[r] = _mm256_xor_si256(acc[r], _mm256_shuffle_epi8(tl, lo));             \
                    acc[r] = _mm256_xor_si256(acc[r], _mm256_shuffle_epi8(th, hi));             \
                }                                                                               \
            }                                                                                   \
            for (int r = 0; r < (N); r++) {                                                     \
                _mm256_storeu_si256((__m256i *)(out[r0 + r] + p), acc[r]);                      \
            }                                                                                   \
        }                                                                                       \
    } while (0)

#define RS_DEFINE(ISA, TARGET, N)                                                               \
    static __attribute__((target(TARGET))) void ISA##_rows_##N(                                 \
        const uint8_t *tables, size_t rows, size_t cols, size_t r0, const uint8_t *const *in,   \
        uint8_t *const *out, size_t begin, size_t end)                                          \
    {                                                                                           \
        RS_##ISA##_BODY(N);                                             \
    }

#define RS_DEFINE_ALL(ISA, TARGET)                                                              \
    RS_DEFINE(ISA, TARGET, 1)                                                                   \
    RS_DEFINE(ISA, TARGET, 2)                                                                   \
    RS_DEFINE(ISA, TARGET, 3)                                                                   \
    RS_DEFINE(ISA, TARGET, 4)                                                                   \
    RS_DEFINE(ISA, TARGET, 5)                                                                   \
    RS_DEFINE(ISA, TARGET, 6)                                                                   \
    RS_DEFINE(ISA, TARGET, 7)                                                                   \
    RS_DEFINE(ISA, TARGET, 8)                                                                   \
    static void ISA##_rows(const uint8_t *tables, size_t rows, size_t cols, size_t r0,          \
                           size_t n, const uint8_t *const *in, uint8_t *const *out,             \
                           size_t begin, size_t end)                                            \
    {                                                                                           \
        switch (n) {                                                                            \
        case 1: ISA##_rows_1(tables, rows, cols, r0, in, out, begin, end); break;               \
        case 2: ISA##_rows_2(tables, rows, cols, r0, in, out, begin, end); break;               \
        case 3: ISA##_rows_3(tables, rows, cols, r0, in, out, begin, end); break;               \
        case 4: ISA##_rows_4(tables, rows, cols, r0, in, out, begin, end); break;               \
        case 5: ISA##_rows_5(tables, rows, cols, r0, in, out, begin, end); break;               \
        case 6: ISA##_rows_6(tables, rows, cols, r0, in, out, begin, end); break;               \
        case 7: ISA##_rows_7(tables, rows, cols, r0, in, out, begin, end); break;               \
        default: ISA##_rows_8(tables, rows, cols, r0, in, out, begin, end); break;              \
        }                                                                                       \
    }

RS_DEFINE_ALL(SSSE3, "ssse3")
RS_DEFINE_ALL(AVX2, "avx2")

#endif /* RS_X86 */

enum { KERNEL_SCALAR = 0, KERNEL_SSSE3 = 1, KERNEL_AVX2 = 2, KERNEL_COUNT = 3 };

static const char *const kernel_names[KERNEL_COUNT] = {"scalar", "ssse3", "avx2"};
static const size_t kernel_width[KERNEL_COUNT] = {1, 16, 32};
static rs_kernel kernel_fns[KERNEL_COUNT] = {scalar_rows, NULL, NULL};
static int kernel_best = KERNEL_SCALAR;

/* Every row of out over bytes [0, length) with kernel `kind`, falling back to narrower kernels
 * for symbols shorter than its vector. */
static void
apply_matrix(int kind, const uint8_t *tables, size_t rows, size_t cols,
             const uint8_t *const *in, uint8_t *const *out, size_t length)
{
    while (kind > KERNEL_SCALAR && length < kernel_width[kind]) {
        kind--;
    }
    rs_kernel fn = kernel_fns[kind];
    size_t width = kernel_width[kind];
    size_t whole = length - length % width;
    /* the chunk of every input symbol is read once per group of 8 rows: keep it in L1 */
    size_t chunk = (RS_CHUNK_BYTES / cols) & ~(size_t)63;
    if (chunk < RS_CHUNK_MIN) {
        chunk = RS_CHUNK_MIN;
    }
    for (size_t begin = 0; begin < whole; begin += chunk) {
        size_t end = begin + chunk < whole ? begin + chunk : whole;
        for (size_t r0 = 0; r0 < rows; r0 += RS_GROUP) {
            size_t n = rows - r0 < RS_GROUP ? rows - r0 : RS_GROUP;
            fn(tables, rows, cols, r0, n, in, out, begin, end);
        }
    }
    if (whole < length) {
        /* width > 1 here and length >= width: one vector ending at the last byte */
        for (size_t r0 = 0; r0 < rows; r0 += RS_GROUP) {
            size_t n = rows - r0 < RS_GROUP ? rows - r0 : RS_GROUP;
            fn(tables, rows, cols, r0, n, in, out, length - width, length);
        }
    }
}

/* ---- matrices ------------------------------------------------------------------------------ */

static inline uint8_t
cauchy(size_t k, size_t i, size_t j)
{
    return gf_inv[(uint8_t)((k + i) ^ j)];
}

static void
expand_entry(uint8_t *dst, uint8_t c)
{
    for (int x = 0; x < 16; x++) {
        dst[x] = gf_mul[c][x];
        dst[16 + x] = gf_mul[c][x << 4];
    }
}

/* Invert the n x n matrix a (row-major) into inv by Gauss-Jordan elimination; 0 if singular. */
static int
invert(uint8_t *a, uint8_t *inv, size_t n)
{
    memset(inv, 0, n * n);
    for (size_t i = 0; i < n; i++) {
        inv[i * n + i] = 1;
    }
    for (size_t col = 0; col < n; col++) {
        size_t pivot = col;
        while (pivot < n && a[pivot * n + col] == 0) {
            pivot++;
        }
        if (pivot == n) {
            return 0;
        }
        if (pivot != col) {
            for (size_t x = 0; x < n; x++) {
                uint8_t t = a[col * n + x];
                a[col * n + x] = a[pivot * n + x];
                a[pivot * n + x] = t;
                t = inv[col * n + x];
                inv[col * n + x] = inv[pivot * n + x];
                inv[pivot * n + x] = t;
            }
        }
        const uint8_t *scale = gf_mul[gf_inv[a[col * n + col]]];
        for (size_t x = 0; x < n; x++) {
            a[col * n + x] = scale[a[col * n + x]];
            inv[col * n + x] = scale[inv[col * n + x]];
        }
        for (size_t row = 0; row < n; row++) {
            uint8_t f = a[row * n + col];
            if (row == col || f == 0) {
                continue;
            }
            const uint8_t *mf = gf_mul[f];
            for (size_t x = 0; x < n; x++) {
                a[row * n + x] ^= mf[a[col * n + x]];
                inv[row * n + x] ^= mf[inv[col * n + x]];
            }
        }
    }
    return 1;
}

/* ---- argument helpers ---------------------------------------------------------------------- */

static int
check_shape(Py_ssize_t k, Py_ssize_t m)
{
    if (k < 1) {
        PyErr_Format(PyExc_ValueError, "k=%zd source symbols; a block needs at least 1", k);
        return 0;
    }
    if (m < 0) {
        PyErr_Format(PyExc_ValueError, "m=%zd repair symbols is negative", m);
        return 0;
    }
    if (k + m > RS_MAX_SYMBOLS) {
        PyErr_Format(PyExc_ValueError, "k+m=%zd symbols (k=%zd, m=%zd) exceeds the limit of %d",
                     k + m, k, m, RS_MAX_SYMBOLS);
        return 0;
    }
    return 1;
}

static int
parse_kernel(PyObject *name, int *kind)
{
    if (name == NULL || name == Py_None) {
        *kind = kernel_best;
        return 1;
    }
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "kernel must be a str, not %.100s", Py_TYPE(name)->tp_name);
        return 0;
    }
    for (int i = 0; i < KERNEL_COUNT; i++) {
        if (PyUnicode_CompareWithASCIIString(name, kernel_names[i]) == 0) {
            if (kernel_fns[i] == NULL) {
                PyErr_Format(PyExc_ValueError, "kernel %R is not supported by this CPU", name);
                return 0;
            }
            *kind = i;
            return 1;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown kernel %R; known: scalar, ssse3, avx2", name);
    return 0;
}

static Py_ssize_t
as_size(PyObject *obj, const char *what)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_ssize_t v = PyLong_AsSsize_t(obj);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s=%zd is negative", what, v);
        return -1;
    }
    return v;
}

/* ---- module functions ---------------------------------------------------------------------- */

PyDoc_STRVAR(encode_tables_doc,
"encode_tables(k, m, /) -> bytes\n--\n\n"
"Nibble tables of the m x k Cauchy repair matrix, for apply(tables, m, ...).");

static PyObject *
rs_encode_tables(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "encode_tables() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t k = PyLong_AsSsize_t(args[0]);
    if (k == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t m = PyLong_AsSsize_t(args[1]);
    if (m == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!check_shape(k, m)) {
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, RS_TABLE * k * m);
    if (result == NULL) {
        return NULL;
    }
    uint8_t *t = (uint8_t *)PyBytes_AS_STRING(result);
    for (Py_ssize_t j = 0; j < k; j++) {
        for (Py_ssize_t i = 0; i < m; i++) {
            expand_entry(t + RS_TABLE * (j * m + i), cauchy((size_t)k, (size_t)i, (size_t)j));
        }
    }
    return result;
}

PyDoc_STRVAR(decode_tables_doc,
"decode_tables(k, m, indices, /) -> tuple[bytes, tuple[int, ...]]\n--\n\n"
"For k distinct symbol indices (0..k-1 source, k..k+m-1 repair), in the order their symbols\n"
"will be given to apply: the nibble tables of the matrix that rebuilds the source symbols\n"
"missing from indices, and those missing indices in ascending order.");

static PyObject *
rs_decode_tables(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "decode_tables() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t k = PyLong_AsSsize_t(args[0]);
    if (k == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t m = PyLong_AsSsize_t(args[1]);
    if (m == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!check_shape(k, m)) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[2], "indices must be a sequence of int");
    if (seq == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t given = PySequence_Fast_GET_SIZE(seq);
    if (given != k) {
        PyErr_Format(PyExc_ValueError, "%zd symbol indices given; exactly k=%zd are needed",
                     given, k);
        goto done;
    }
    Py_ssize_t n = k + m;
    int position[RS_MAX_SYMBOLS]; /* index -> position in indices, or -1 */
    size_t order[RS_MAX_SYMBOLS];  /* position -> index */
    for (Py_ssize_t i = 0; i < n; i++) {
        position[i] = -1;
    }
    for (Py_ssize_t c = 0; c < k; c++) {
        Py_ssize_t index = as_size(PySequence_Fast_GET_ITEM(seq, c), "symbol index");
        if (index < 0) {
            goto done;
        }
        if (index >= n) {
            PyErr_Format(PyExc_ValueError,
                         "symbol index %zd out of range 0..%zd (k=%zd, m=%zd)", index, n - 1, k,
                         m);
            goto done;
        }
        if (position[index] >= 0) {
            PyErr_Format(PyExc_ValueError, "symbol index %zd given twice", index);
            goto done;
        }
        position[index] = (int)c;
        order[c] = (size_t)index;
    }
    /* missing source symbols E and the repair symbols R used, both ascending */
    size_t missing[RS_MAX_SYMBOLS], repair[RS_MAX_SYMBOLS];
    size_t e = 0, r = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        if (position[i] < 0) {
            missing[e++] = (size_t)i;
        }
    }
    for (Py_ssize_t i = k; i < n; i++) {
        if (position[i] >= 0) {
            repair[r++] = (size_t)i - (size_t)k;
        }
    }
    /* k distinct indices: as many repair symbols as missing sources */
    uint8_t a[RS_MAX_SYMBOLS * RS_MAX_SYMBOLS / 4];
    uint8_t ainv[RS_MAX_SYMBOLS * RS_MAX_SYMBOLS / 4];
    /* e <= m <= 255 - k + 1 and e <= k, so e <= 128 and e * e fits */
    for (size_t x = 0; x < e; x++) {
        for (size_t y = 0; y < e; y++) {
            a[x * e + y] = cauchy((size_t)k, repair[x], missing[y]);
        }
    }
    if (!invert(a, ainv, e)) {
        PyErr_Format(PyExc_ValueError, "decode matrix for k=%zd, m=%zd is singular", k, m);
        goto done;
    }
    PyObject *tables = PyBytes_FromStringAndSize(NULL, RS_TABLE * (Py_ssize_t)e * k);
    if (tables == NULL) {
        goto done;
    }
    uint8_t *t = (uint8_t *)PyBytes_AS_STRING(tables);
    for (Py_ssize_t c = 0; c < k; c++) {
        size_t index = order[c];
        for (size_t row = 0; row < e; row++) {
            uint8_t coef;
            if (index >= (size_t)k) {
                /* repair symbols are consumed in ascending order, as in `repair` */
                size_t col = 0;
                while (repair[col] != index - (size_t)k) {
                    col++;
                }
                coef = ainv[row * e + col];
            }
            else {
                /* a present source symbol: row of A^-1 times column `index` of C[R] */
                coef = 0;
                for (size_t x = 0; x < e; x++) {
                    coef ^= gf_mul[ainv[row * e + x]][cauchy((size_t)k, repair[x], index)];
                }
            }
            expand_entry(t + RS_TABLE * ((size_t)c * e + row), coef);
        }
    }
    PyObject *lost = PyTuple_New((Py_ssize_t)e);
    if (lost == NULL) {
        Py_DECREF(tables);
        goto done;
    }
    for (size_t x = 0; x < e; x++) {
        PyObject *v = PyLong_FromSize_t(missing[x]);
        if (v == NULL) {
            Py_DECREF(tables);
            Py_DECREF(lost);
            goto done;
        }
        PyTuple_SET_ITEM(lost, (Py_ssize_t)x, v);
    }
    result = PyTuple_Pack(2, tables, lost);
    Py_DECREF(tables);
    Py_DECREF(lost);
done:
    Py_DECREF(seq);
    return result;
}

/* The output symbols of apply: rows new bytes objects of `length` bytes. */
static PyObject *
apply_and_pack(int kind, const Py_buffer *table_buf, Py_ssize_t rows, Py_ssize_t cols,
               const uint8_t *const *in, Py_ssize_t length)
{
    PyObject *out = PyList_New(rows);
    if (out == NULL) {
        return NULL;
    }
    uint8_t *dst[RS_MAX_SYMBOLS];
    for (Py_ssize_t i = 0; i < rows; i++) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, length);
        if (b == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        dst[i] = (uint8_t *)PyBytes_AS_STRING(b);
        PyList_SET_ITEM(out, i, b);
    }
    if (rows > 0) {
        Py_BEGIN_ALLOW_THREADS
        apply_matrix(kind, (const uint8_t *)table_buf->buf, (size_t)rows, (size_t)cols, in, dst,
                     (size_t)length);
        Py_END_ALLOW_THREADS
    }
    return out;
}

static int
check_tables(const Py_buffer *table_buf, Py_ssize_t rows, Py_ssize_t cols)
{
    if (rows > RS_MAX_SYMBOLS) {
        PyErr_Format(PyExc_ValueError, "rows=%zd exceeds the limit of %d", rows, RS_MAX_SYMBOLS);
        return 0;
    }
    if (cols < 1 || cols > RS_MAX_SYMBOLS) {
        PyErr_Format(PyExc_ValueError, "%zd input symbols; 1..%d are allowed", cols,
                     RS_MAX_SYMBOLS);
        return 0;
    }
    if (table_buf->len != RS_TABLE * rows * cols) {
        PyErr_Format(PyExc_ValueError,
                     "tables of %zd bytes do not fit a %zd x %zd matrix (%zd bytes expected)",
                     table_buf->len, rows, cols, RS_TABLE * rows * cols);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(apply_doc,
"apply(tables, rows, symbols, kernel=None, /) -> list[bytes]\n--\n\n"
"Multiply the rows x len(symbols) matrix whose nibble tables are given by the column of\n"
"equal-length symbols: rows new symbols. kernel: 'scalar', 'ssse3', 'avx2' or None (best).");

static PyObject *
rs_apply(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 3 || nargs > 4) {
        PyErr_Format(PyExc_TypeError, "apply() takes 3 or 4 arguments (%zd given)", nargs);
        return NULL;
    }
    int kind;
    if (!parse_kernel(nargs == 4 ? args[3] : NULL, &kind)) {
        return NULL;
    }
    Py_ssize_t rows = as_size(args[1], "rows");
    if (rows < 0) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[2], "symbols must be a sequence of buffers");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t cols = PySequence_Fast_GET_SIZE(seq);
    Py_buffer table_buf;
    Py_buffer bufs[RS_MAX_SYMBOLS];
    Py_ssize_t held = 0;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[0], &table_buf, PyBUF_SIMPLE) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    if (!check_tables(&table_buf, rows, cols)) {
        goto done;
    }
    const uint8_t *in[RS_MAX_SYMBOLS];
    Py_ssize_t length = -1;
    for (; held < cols; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, held), &bufs[held], PyBUF_SIMPLE)
            < 0) {
            goto done;
        }
        if (length < 0) {
            length = bufs[held].len;
        }
        else if (bufs[held].len != length) {
            PyErr_Format(PyExc_ValueError,
                         "symbol %zd is %zd bytes, symbol 0 is %zd; all symbols must have one "
                         "length",
                         held, bufs[held].len, length);
            held++;
            goto done;
        }
        in[held] = (const uint8_t *)bufs[held].buf;
    }
    if (length < 1) {
        PyErr_Format(PyExc_ValueError, "symbol length %zd; symbols cannot be empty", length);
        goto done;
    }
    result = apply_and_pack(kind, &table_buf, rows, cols, in, length);
done:
    for (Py_ssize_t i = 0; i < held; i++) {
        PyBuffer_Release(&bufs[i]);
    }
    PyBuffer_Release(&table_buf);
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(apply_joined_doc,
"apply_joined(tables, rows, cols, block, kernel=None, /) -> list[bytes]\n--\n\n"
"Like apply for cols equal-length symbols lying end to end in one buffer.");

static PyObject *
rs_apply_joined(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 4 || nargs > 5) {
        PyErr_Format(PyExc_TypeError, "apply_joined() takes 4 or 5 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    int kind;
    if (!parse_kernel(nargs == 5 ? args[4] : NULL, &kind)) {
        return NULL;
    }
    Py_ssize_t rows = as_size(args[1], "rows");
    if (rows < 0) {
        return NULL;
    }
    Py_ssize_t cols = as_size(args[2], "cols");
    if (cols < 0) {
        return NULL;
    }
    Py_buffer table_buf, block;
    if (PyObject_GetBuffer(args[0], &table_buf, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[3], &block, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&table_buf);
        return NULL;
    }
    PyObject *result = NULL;
    if (!check_tables(&table_buf, rows, cols)) {
        goto done;
    }
    if (block.len == 0 || block.len % cols) {
        PyErr_Format(PyExc_ValueError,
                     "block of %zd bytes does not split into %zd non-empty symbols", block.len,
                     cols);
        goto done;
    }
    Py_ssize_t length = block.len / cols;
    const uint8_t *in[RS_MAX_SYMBOLS];
    for (Py_ssize_t j = 0; j < cols; j++) {
        in[j] = (const uint8_t *)block.buf + j * length;
    }
    result = apply_and_pack(kind, &table_buf, rows, cols, in, length);
done:
    PyBuffer_Release(&block);
    PyBuffer_Release(&table_buf);
    return result;
}

PyDoc_STRVAR(kernels_doc,
"kernels() -> tuple[str, ...]\n--\n\n"
"The kernels this CPU runs, the one apply uses by default last.");

static PyObject *
rs_kernels(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyObject *names = PyList_New(0);
    if (names == NULL) {
        return NULL;
    }
    for (int i = 0; i <= kernel_best; i++) {
        if (kernel_fns[i] == NULL) {
            continue;
        }
        PyObject *s = PyUnicode_FromString(kernel_names[i]);
        if (s == NULL || PyList_Append(names, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(s);
    }
    PyObject *tuple = PyList_AsTuple(names);
    Py_DECREF(names);
    return tuple;
}

PyDoc_STRVAR(gf_mul_doc, "gf_mul(a, b, /) -> int\n--\n\nProduct of two elements of GF(256).");

static PyObject *
rs_gf_mul(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "gf_mul() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    long a = PyLong_AsLong(args[0]);
    if (a == -1 && PyErr_Occurred()) {
        return NULL;
    }
    long b = PyLong_AsLong(args[1]);
    if (b == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (a < 0 || a > 255 || b < 0 || b > 255) {
        PyErr_Format(PyExc_ValueError, "field elements are 0..255, got %ld and %ld", a, b);
        return NULL;
    }
    return PyLong_FromLong(gf_mul[a][b]);
}

static PyMethodDef rs_methods[] = {
    {"encode_tables", (PyCFunction)(void (*)(void))rs_encode_tables, METH_FASTCALL,
     encode_tables_doc},
    {"decode_tables", (PyCFunction)(void (*)(void))rs_decode_tables, METH_FASTCALL,
     decode_tables_doc},
    {"apply", (PyCFunction)(void (*)(void))rs_apply, METH_FASTCALL, apply_doc},
    {"apply_joined", (PyCFunction)(void (*)(void))rs_apply_joined, METH_FASTCALL,
     apply_joined_doc},
    {"kernels", rs_kernels, METH_NOARGS, kernels_doc},
    {"gf_mul", (PyCFunction)(void (*)(void))rs_gf_mul, METH_FASTCALL, gf_mul_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef rs_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "diode.protocol._rs",
    .m_doc = "Systematic Reed-Solomon erasure coding over GF(2^8) (Cauchy generator, SIMD).",
    .m_size = -1,
    .m_methods = rs_methods,
};

PyMODINIT_FUNC
PyInit__rs(void)
{
    gf_init();
#if RS_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("ssse3")) {
        kernel_fns[KERNEL_SSSE3] = SSSE3_rows;
        kernel_best = KERNEL_SSSE3;
    }
    if (__builtin_cpu_supports("avx2")) {
        kernel_fns[KERNEL_AVX2] = AVX2_rows;
        kernel_best = KERNEL_AVX2;
    }
#endif
    PyObject *module = PyModule_Create(&rs_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "MAX_SYMBOLS", RS_MAX_SYMBOLS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
