/* fastxent._cpu: what this CPU and its operating system can run (CPUID and XGETBV).

   fastxent._kernels uses it at import to choose the instruction-set level of the kernels.  This
   module is compiled for the baseline of the architecture (setup.py gives it no -march flag), so
   it runs on every CPU, and it reads the CPU itself: /proc/cpuinfo would describe the host, not
   the CPU an emulator (qemu -cpu ...) or a virtual machine presents.

   features() -> dict {feature name: bool}; the names are the compiler's (__AVX2__ -> "avx2"),
   plus "os_avx" / "os_avx512": the OS saves the 256-bit / 512-bit register state (XCR0), without
   which AVX / AVX-512 instructions fault even where CPUID lists them.  Empty off x86-64.
   brand() -> the CPU's name ("" when unknown). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FX_X86 1
#include <cpuid.h>

/* CPUID leaf, register (0 eax, 1 ebx, 2 ecx, 3 edx), bit */
typedef struct { const char *name; unsigned leaf, sub, reg, bit; } FxFeature;

static const FxFeature FX_FEATURES[] = {
    {"sse3", 1, 0, 2, 0},         {"pclmul", 1, 0, 2, 1},       {"ssse3", 1, 0, 2, 9},
    {"fma", 1, 0, 2, 12},         {"cx16", 1, 0, 2, 13},        {"sse4_1", 1, 0, 2, 19},
    {"sse4_2", 1, 0, 2, 20},      {"movbe", 1, 0, 2, 22},       {"popcnt", 1, 0, 2, 23},
    {"aes", 1, 0, 2, 25},         {"xsave", 1, 0, 2, 26},       {"osxsave", 1, 0, 2, 27},
    {"avx", 1, 0, 2, 28},         {"f16c", 1, 0, 2, 29},        {"rdrnd", 1, 0, 2, 30},
    {"sse", 1, 0, 3, 25},         {"sse2", 1, 0, 3, 26},
    {"bmi", 7, 0, 1, 3},          {"avx2", 7, 0, 1, 5},         {"bmi2", 7, 0, 1, 8},
    {"avx512f", 7, 0, 1, 16},     {"avx512dq", 7, 0, 1, 17},    {"rdseed", 7, 0, 1, 18},
    {"adx", 7, 0, 1, 19},         {"avx512ifma", 7, 0, 1, 21},  {"avx512cd", 7, 0, 1, 28},
    {"sha", 7, 0, 1, 29},         {"avx512bw", 7, 0, 1, 30},    {"avx512vl", 7, 0, 1, 31},
    {"avx512vbmi", 7, 0, 2, 1},   {"avx512vbmi2", 7, 0, 2, 6},  {"gfni", 7, 0, 2, 8},
    {"vaes", 7, 0, 2, 9},         {"vpclmulqdq", 7, 0, 2, 10},  {"avx512vnni", 7, 0, 2, 11},
    {"avx512bitalg", 7, 0, 2, 12}, {"avx512vpopcntdq", 7, 0, 2, 14},
    {"avx512fp16", 7, 0, 3, 23},
    {"avxvnni", 7, 1, 0, 4},      {"avx512bf16", 7, 1, 0, 5},
    {"lahf_sahf", 0x80000001u, 0, 2, 0}, {"lzcnt", 0x80000001u, 0, 2, 5},
};

static int fx_cpuid(unsigned leaf, unsigned sub, unsigned r[4])
{
    unsigned max = __get_cpuid_max(leaf & 0x80000000u, NULL);
    if (max == 0 || leaf > max) {
        r[0] = r[1] = r[2] = r[3] = 0;
        return 0;
    }
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    return 1;
}

static unsigned long long fx_xcr0(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static int fx_set(PyObject *d, const char *name, int value)
{
    return PyDict_SetItemString(d, name, value ? Py_True : Py_False);
}
#endif

static PyObject *fx_features(PyObject *self, PyObject *unused)
{
    PyObject *d = PyDict_New();
    (void)self;
    (void)unused;
    if (d == NULL)
        return NULL;
#ifdef FX_X86
    {
        size_t i;
        unsigned r[4];
        unsigned long long xcr0 = 0;
        int os_avx = 0, os_avx512 = 0;
        for (i = 0; i < sizeof(FX_FEATURES) / sizeof(FX_FEATURES[0]); i++) {
            const FxFeature *f = &FX_FEATURES[i];
            int on = fx_cpuid(f->leaf, f->sub, r) && ((r[f->reg] >> f->bit) & 1u);
            if (fx_set(d, f->name, on) < 0)
                goto fail;
        }
        fx_cpuid(1, 0, r);
        if ((r[2] >> 27) & 1u) {          /* OSXSAVE: XGETBV is available */
            xcr0 = fx_xcr0();
            os_avx = (xcr0 & 0x6u) == 0x6u;              /* SSE and AVX state */
            os_avx512 = os_avx && (xcr0 & 0xe0u) == 0xe0u;  /* opmask, ZMM0-15 upper, ZMM16-31 */
        }
        if (fx_set(d, "os_avx", os_avx) < 0 || fx_set(d, "os_avx512", os_avx512) < 0)
            goto fail;
    }
#endif
    return d;
#ifdef FX_X86
fail:
    Py_DECREF(d);
    return NULL;
#endif
}

static PyObject *fx_brand(PyObject *self, PyObject *unused)
{
    char name[49] = {0};
    (void)self;
    (void)unused;
#ifdef FX_X86
    {
        unsigned r[4], leaf;
        if (__get_cpuid_max(0x80000000u, NULL) >= 0x80000004u) {
            for (leaf = 0; leaf < 3; leaf++) {
                fx_cpuid(0x80000002u + leaf, 0, r);
                memcpy(name + 16 * leaf, r, 16);
            }
        }
    }
#endif
    {
        /* trim the padding some CPUs put around the name */
        char *s = name, *e = name + strlen(name);
        while (*s == ' ')
            s++;
        while (e > s && e[-1] == ' ')
            *--e = '\0';
        return PyUnicode_DecodeLatin1(s, (Py_ssize_t)strlen(s), NULL);
    }
}

static PyMethodDef fx_methods[] = {
    {"features", fx_features, METH_NOARGS,
     "features() -> dict: CPU features (compiler names) and OS register-state support, x86-64 only."},
    {"brand", fx_brand, METH_NOARGS, "brand() -> str: the CPU's name, or '' when unknown."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fx_module = {
    PyModuleDef_HEAD_INIT, "_cpu",
    "What this CPU and its operating system can run (CPUID, XGETBV): used to choose the kernels.",
    -1, fx_methods,
};

PyMODINIT_FUNC PyInit__cpu(void)
{
    return PyModule_Create(&fx_module);
}
