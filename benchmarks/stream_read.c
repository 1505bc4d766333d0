/* STREAM-style read bandwidth, independent of numoe: a check on numoe's probe
 * (numoe._cpu.read_bandwidth_bytes, numoe.runtime.bandwidth.measure_read_bandwidth).
 *
 *   cc -O2 -march=native -pthread stream_read.c -o stream_read
 *   ./stream_read MIB CPUS PASSES PREFETCH HUGE [PREFETCH_DISTANCE]
 *
 * MIB: buffer size in MiB; CPUS: comma list of CPUs, one reading thread pinned to each;
 * PASSES: timed reads of the whole buffer; PREFETCH: 1 = a software prefetch (prefetcht0) for
 * every 64-byte line PREFETCH_DISTANCE bytes ahead (default 2048), 0 = none (the hardware
 * prefetchers only); HUGE: 1 = madvise(MADV_HUGEPAGE), 0 = madvise(MADV_NOHUGEPAGE), before
 * the first touch.
 *
 * The buffer is anonymous memory, 2 MiB aligned; each thread writes (first touch) and then
 * reads its own contiguous share, so its pages come from its node as numoe's NodeBuffer's do.
 * A pass: all threads start at a barrier, read their share with 64-byte vector loads into
 * four accumulators (GCC vector extensions: AVX-512 or AVX2 as -march=native allows), and
 * the pass ends when the last one is done (a second barrier). Prints one JSON line:
 * {"gbps": [per pass], "anon_huge_kb": K, ...}; GB = 1e9 bytes.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef uint64_t v8u64 __attribute__((vector_size(64)));

enum { MAX_THREADS = 1024, MAX_PASSES = 10000, LINE = 64, STEP = 4 * LINE };

static uint8_t *buf;
static size_t share;
static int n_threads, passes, prefetch;
static size_t distance = 2048;
static int cpus[MAX_THREADS];
static pthread_barrier_t barrier;
static double pass_ns[MAX_PASSES];
static volatile uint64_t sink;

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* One body for both readers: inlined with a constant `prefetch`, so each caller's loop is
   compiled without the other's branch. */
static inline __attribute__((always_inline)) uint64_t read_bytes(const uint8_t *p, size_t n,
                                                                 int prefetch) {
  v8u64 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
  const size_t d = distance;
  for (size_t i = 0; i + STEP <= n; i += STEP) {
    if (prefetch) { /* past the end of the share: a prefetch never faults */
      __builtin_prefetch(p + i + d, 0, 3);
      __builtin_prefetch(p + i + d + LINE, 0, 3);
      __builtin_prefetch(p + i + d + 2 * LINE, 0, 3);
      __builtin_prefetch(p + i + d + 3 * LINE, 0, 3);
    }
    const v8u64 *q = (const v8u64 *)(p + i);
    a0 += q[0];
    a1 += q[1];
    a2 += q[2];
    a3 += q[3];
  }
  v8u64 a = a0 + a1 + a2 + a3;
  uint64_t s = 0;
  for (int k = 0; k < 8; ++k) s += a[k];
  return s;
}

static uint64_t read_plain(const uint8_t *p, size_t n) { return read_bytes(p, n, 0); }
static uint64_t read_prefetch(const uint8_t *p, size_t n) { return read_bytes(p, n, 1); }

static void *worker(void *arg) {
  const int t = (int)(intptr_t)arg;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpus[t], &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  uint8_t *p = buf + (size_t)t * share;
  memset(p, 1, share); /* first touch by the reading thread */
  uint64_t s = 0;
  pthread_barrier_wait(&barrier);      /* all touched */
  s += read_plain(p, share);           /* an untimed pass: TLB, page tables */
  for (int r = 0; r < passes; ++r) {
    pthread_barrier_wait(&barrier);
    double t0 = t == 0 ? now_ns() : 0;
    s += prefetch ? read_prefetch(p, share) : read_plain(p, share);
    pthread_barrier_wait(&barrier);
    if (t == 0) pass_ns[r] = now_ns() - t0;
  }
  sink += s;
  return NULL;
}

static long anon_huge_kb(void) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  char line[256];
  long kb = -1;
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
  fclose(f);
  return kb;
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: %s MIB CPUS PASSES PREFETCH(0|1) HUGE(0|1) [PREFETCH_DISTANCE]\n",
            argv[0]);
    return 2;
  }
  const size_t mib = strtoull(argv[1], NULL, 10);
  for (char *c = strtok(argv[2], ","); c && n_threads < MAX_THREADS; c = strtok(NULL, ","))
    cpus[n_threads++] = atoi(c);
  passes = atoi(argv[3]);
  prefetch = atoi(argv[4]);
  const int huge = atoi(argv[5]);
  if (argc > 6) distance = strtoull(argv[6], NULL, 10);
  if (n_threads < 1 || passes < 1 || passes > MAX_PASSES || mib < 1) {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  share = (mib << 20) / n_threads / STEP * STEP;
  const size_t bytes = share * n_threads, align = 2u << 20;
  uint8_t *raw = mmap(NULL, bytes + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
  if (raw == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  buf = (uint8_t *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
  int advised = madvise(buf, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  pthread_barrier_init(&barrier, NULL, (unsigned)n_threads);
  pthread_t th[MAX_THREADS];
  for (int t = 0; t < n_threads; ++t) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
  for (int t = 0; t < n_threads; ++t) pthread_join(th[t], NULL);
  printf("{\"bytes\": %zu, \"threads\": %d, \"prefetch\": %d, \"distance\": %zu, \"huge\": %d, "
         "\"madvise_ok\": %s, \"anon_huge_kb\": %ld, \"vector_bytes\": %d, \"gbps\": [",
         bytes, n_threads, prefetch, distance, huge, advised == 0 ? "true" : "false",
         anon_huge_kb(), (int)sizeof(v8u64));
  for (int r = 0; r < passes; ++r) printf("%s%.4f", r ? ", " : "", bytes / pass_ns[r]);
  printf("]}\n");
  munmap(raw, bytes + align);
  return 0;
}
