// main.c — the trainer's command line. The only place that exits: it maps a status to an exit code, and aborts
// all ranks when a failure is local to one rank (so no rank waits forever in a collective).
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "augment.h"
#include "checkpoint.h"
#include "comm.h"
#include "common.h"
#include "config.h"
#include "layer.h"
#include "placement.h"
#include "test_hooks.h"
#ifdef DDP_TESTING
#include "test_env.h"  // tests/aids: the test trainer only
#endif
#include "train.h"

#define MAX_SETS 64

static int g_save_given;  // for the message of stdout_final_status

static void usage(FILE *f) {
    fprintf(f,
            "usage: trainer --config FILE [options]\n"
            "       mpirun -np N trainer --config FILE [options]\n"
            "       trainer --eval CKPT [--metrics FILE] [options]           (also under mpirun)\n"
            "       trainer --predict CKPT --images PATH... [--out FILE.csv]  (one process)\n"
            "\n"
            "Trains the CNN described by an INI config on one rank per process (one GPU per rank with\n"
            "backend=cuda), averaging gradients across ranks in buckets overlapped with backward.\n"
            "\n"
            "Options (each shortcut is the same as the --set shown):\n"
            "  --config FILE       model, data and run configuration (configs/*.cfg); optional with a\n"
            "                      checkpoint (--resume, --eval, --predict, --init-from): its stored config\n"
            "  --epochs N          net.epochs=N\n"
            "  --batch N           net.batch=N (per rank in weak scaling, global in strong scaling)\n"
            "  --lr X              net.lr=X\n"
            "  --seed N            net.seed=N\n"
            "  --threads N         net.threads=N (CPU threads per rank; 0 = cores / ranks on the host)\n"
            "  --backend NAME      net.backend=cpu|cuda\n"
            "  --comm NAME         parallel.comm=mpi|nccl\n"
            "  --bucket-kb N       parallel.bucket_kb=N (gradient all-reduce bucket size)\n"
            "  --no-overlap        parallel.overlap=0 (all-reduce after backward instead of during it)\n"
            "  --scaling MODE      parallel.scaling=weak|strong\n"
            "  --set S.KEY=VALUE   set any config key (section net, data, parallel, or a layer name)\n"
            "  --steps N           stop after N global steps in total (saves a checkpoint with --save)\n"
            "  --metrics FILE      write per-epoch metrics as JSON Lines (rank 0)\n"
            "  --baseline FILE     metrics of an np 1 run: report measured scaling efficiency\n"
            "  --trace DIR         timeline per rank: DIR/trace_rank<R>.json (Chrome trace events, Perfetto)\n"
            "  --tensorboard DIR   training curves as TensorBoard event files in DIR (rank 0; every --log-every\n"
            "                      seconds and at each epoch's end): tensorboard --logdir DIR\n"
            "  --save FILE         write a safetensors checkpoint after each epoch and when stopped\n"
            "  --resume FILE       continue from a checkpoint (bit-identical to an uninterrupted run)\n"
            "  --resume-if-exists  resume from the --save file when it exists, else start fresh (requeued jobs)\n"
            "  --save-every N      also keep <stem>-eN.safetensors every N epochs (stem: --save without .safetensors)\n"
            "  --keep-best         also keep <stem>-best.safetensors: the best test accuracy so far\n"
            "  --init-from CKPT    start from a checkpoint's weights only (fine-tuning: new optimizer state,\n"
            "                      schedule from step 0)\n"
            "  --init-exclude L    with --init-from: layers or tensors (comma-separated, e.g. dense2) left at\n"
            "                      their initial values, e.g. a new head\n"
            "  --eval CKPT         no training: test loss, accuracy, per-class accuracy and confusion matrix of\n"
            "                      a checkpoint (JSON with --metrics FILE)\n"
            "  --predict CKPT      no training: classify --images PATH (repeatable): JPEG/PNG files, folders of\n"
            "                      them, list files, or one IDX (raw or gzip) or CIFAR-10 binary file; CSV\n"
            "                      path,class,class_name,p0,... to --out FILE.csv or stdout\n"
            "  --print-config      print the effective configuration and exit\n"
            "  --print-model       print every layer (name, kind, output shape, parameters) and the total, and exit\n"
            "  --list-layers       every layer kind: its section, default names, doc, keys with defaults and\n"
            "                      ranges (--json: for programs; --markdown: docs/config.md's table)\n"
            "  --print-placement   every rank prints its host, rank, node-local rank and GPU, then all exit\n"
            "  --quiet             print only errors and the final summary\n"
            "  --log-every S       when stdout is not a terminal (a Slurm log): a progress line every S seconds\n"
            "                      with step, loss, img/s and ETA (default 10; 0: none)\n"
            "  --verbose           the step-time breakdown (fwd, bwd, comm, exposed, opt, efficiency) per epoch\n"
            "  --help              this text\n"
            "  --version           print the version\n"
            "\n"
            "Data ([data] format=): idx and cifar10 files, loaded whole; your own JPEG/PNG images as folders\n"
            "(folder: train_dir=ROOT/train, one sub-directory per class), list files (list: train_list=, lines\n"
            "`path label`) or tar shards (shards: train_shards=t-{000000..000099}.tar), streamed by data.workers\n"
            "decode threads per rank. Keys and transforms: docs/config.md, docs/data.md.\n"
            "\n"
            "Exit codes: 0 success, 1 runtime failure, 2 bad input (CLI, config, data, checkpoint),\n"
            "3 training diverged (NaN/Inf), 4 communication failure (peer died, timeout, replica mismatch),\n"
            "5 stopped by SIGINT/SIGTERM.\n");
}

// --print-model: one line per layer (as PyTorch's model summaries) and the total, which torchvision's models'
// parameter counts can be checked against.
static int print_model(const net_config *cfg) {
    static layer_shape shapes[CFG_MAX_LAYERS + 1];
    static long long params[CFG_MAX_LAYERS];
    TRY(config_layer_shapes(cfg, shapes, params));
    long long total = 0;
    printf("%-4s %-28s %-10s %-16s %12s\n", "#", "name", "kind", "output", "parameters");
    for (int i = 0; i < cfg->n_layers; i++) {
        const layer_shape *o = &shapes[i + 1];
        char shape[48];
        snprintf(shape, sizeof shape, o->spatial ? "%dx%dx%d" : "%d", o->c, o->h, o->w);
        printf("%-4d %-28s %-10s %-16s %12lld\n", i, cfg->layers[i].name, layer_kind_of(cfg->layers[i].type)->section,
               shape, params[i]);
        total += params[i];
    }
    printf("input %dx%dx%d, %d layers, %lld parameters\n", cfg->channels, cfg->height, cfg->width, cfg->n_layers, total);
    return ST_OK;
}

// Rank before the process group starts (MPI_Init), so that --help and CLI errors print once under mpirun.
static int launcher_rank(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

typedef struct cli {
    const char *config;
    const char *sets[MAX_SETS];
    char set_buf[MAX_SETS][CFG_PATH_MAX + 64];
    int n_sets;
    train_opts opts;
    int print_config;
    int print_model;
    int resume_if_exists;
    int print_placement;
} cli;

static int cli_add_set(cli *c, const char *fmt, const char *value) {
    if (c->n_sets >= MAX_SETS) return ERR(ST_INPUT, "too many --set options (at most %d)", MAX_SETS);
    int n = snprintf(c->set_buf[c->n_sets], sizeof c->set_buf[0], fmt, value);
    if (n < 0 || (size_t)n >= sizeof c->set_buf[0]) return ERR(ST_INPUT, "option value too long: %s", value);
    c->sets[c->n_sets] = c->set_buf[c->n_sets];
    c->n_sets++;
    return ST_OK;
}

enum { OPT_BACKEND = 256, OPT_COMM, OPT_BUCKET, OPT_NO_OVERLAP, OPT_SCALING, OPT_STEPS, OPT_METRICS, OPT_BASELINE,
       OPT_SAVE, OPT_RESUME, OPT_PRINT_CONFIG, OPT_PRINT_MODEL, OPT_VERSION, OPT_TRACE, OPT_EVAL, OPT_PREDICT, OPT_IMAGES, OPT_OUT,
       OPT_INIT_FROM, OPT_INIT_EXCLUDE, OPT_SAVE_EVERY, OPT_KEEP_BEST, OPT_RESUME_IF_EXISTS, OPT_PRINT_PLACEMENT,
       OPT_LOG_EVERY, OPT_VERBOSE, OPT_LIST_LAYERS, OPT_JSON, OPT_MARKDOWN, OPT_TENSORBOARD };

// Options that train, and so cannot go with --eval or --predict.
static int cli_check_use(const cli *c) {
    const train_opts *o = &c->opts;
    if (o->eval_path && o->predict_path) return ERR(ST_INPUT, "--eval and --predict cannot be combined (one per run)");
    const char *use = o->eval_path ? "--eval" : "--predict";
    const struct {
        int given;
        const char *name;
    } training[] = {{o->resume_path != NULL, "--resume"}, {c->resume_if_exists, "--resume-if-exists"},
                    {o->init_from != NULL, "--init-from"}, {o->init_exclude != NULL, "--init-exclude"},
                    {o->save_path != NULL, "--save"},     {o->save_every > 0, "--save-every"},
                    {o->keep_best, "--keep-best"},        {o->max_steps > 0, "--steps"},
                    {o->trace_dir != NULL, "--trace"},    {o->baseline_path != NULL, "--baseline"},
                    {o->tensorboard_dir != NULL, "--tensorboard"}};
    for (size_t i = 0; i < sizeof training / sizeof training[0]; i++)
        if (training[i].given)
            return ERR(ST_INPUT, "%s cannot be combined with %s (%s uses a trained model; %s is for training)", use,
                       training[i].name, use, training[i].name);
    if (o->predict_path && !o->images_path)
        return ERR(ST_INPUT, "--predict needs --images PATH (JPEG/PNG files, folders, list files, or an IDX or CIFAR-10 "
                             "file to classify)");
    if (o->predict_path && o->metrics_path)
        return ERR(ST_INPUT, "--predict writes its CSV to --out FILE (or stdout), not --metrics");
    return ST_OK;
}

// Options that only make sense together: one line naming what is missing or what clashes.
static int cli_check(const cli *c) {
    const train_opts *o = &c->opts;
    if (o->eval_path || o->predict_path) TRY(cli_check_use(c));
    if (o->images_path && !o->predict_path) return ERR(ST_INPUT, "--images is for --predict CKPT");
    if (o->out_path && !o->predict_path)
        return ERR(ST_INPUT, "--out is for --predict CKPT (--eval writes its JSON report with --metrics FILE)");
    if (o->init_exclude && !o->init_from) return ERR(ST_INPUT, "--init-exclude needs --init-from CKPT");
    if (o->init_from && o->resume_path)
        return ERR(ST_INPUT, "--init-from and --resume cannot be combined (--resume continues a run with its optimizer "
                             "state; --init-from starts a new run from weights only)");
    if (c->resume_if_exists && o->resume_path)
        return ERR(ST_INPUT, "--resume-if-exists and --resume cannot be combined");
    if (c->resume_if_exists && !o->save_path)
        return ERR(ST_INPUT, "--resume-if-exists needs --save FILE (the checkpoint it resumes from when it exists)");
    if ((o->save_every > 0 || o->keep_best) && !o->save_path)
        return ERR(ST_INPUT, "%s needs --save FILE (its copies are named after it)",
                   o->save_every > 0 ? "--save-every" : "--keep-best");
    return ST_OK;
}

// --resume-if-exists: resume from the --save file when it exists (a requeued job continues where it stopped),
// else start fresh, so one job line serves the first run and every requeue. Every rank decides alike on a
// shared file system; ranks that do not are refused by the configuration agreement (resume=yes/no).
static void cli_resume_if_exists(cli *c) {
    struct stat sb;
    if (c->resume_if_exists && c->opts.save_path && stat(c->opts.save_path, &sb) == 0)
        c->opts.resume_path = c->opts.save_path;
}

// The checkpoint whose stored configuration stands in for a missing --config (NULL: none given).
static const char *cli_config_checkpoint(const cli *c) {
    const train_opts *o = &c->opts;
    return o->resume_path ? o->resume_path
         : o->eval_path   ? o->eval_path
         : o->predict_path ? o->predict_path
                          : o->init_from;
}

// Returns ST_OK, ST_INPUT on a bad option, or -1 when --help/--version was handled.
static int cli_parse(int argc, char **argv, cli *c) {
    static const struct option longopts[] = {
        {"config", required_argument, 0, 'c'},        {"epochs", required_argument, 0, 'e'},
        {"batch", required_argument, 0, 'b'},         {"lr", required_argument, 0, 'l'},
        {"seed", required_argument, 0, 's'},          {"threads", required_argument, 0, 't'},
        {"set", required_argument, 0, 'S'},           {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},                {"version", no_argument, 0, OPT_VERSION},
        {"backend", required_argument, 0, OPT_BACKEND}, {"comm", required_argument, 0, OPT_COMM},
        {"bucket-kb", required_argument, 0, OPT_BUCKET}, {"no-overlap", no_argument, 0, OPT_NO_OVERLAP},
        {"scaling", required_argument, 0, OPT_SCALING}, {"steps", required_argument, 0, OPT_STEPS},
        {"metrics", required_argument, 0, OPT_METRICS}, {"baseline", required_argument, 0, OPT_BASELINE},
        {"save", required_argument, 0, OPT_SAVE},     {"resume", required_argument, 0, OPT_RESUME},
        {"print-config", no_argument, 0, OPT_PRINT_CONFIG}, {"print-model", no_argument, 0, OPT_PRINT_MODEL}, {"trace", required_argument, 0, OPT_TRACE},
        {"eval", required_argument, 0, OPT_EVAL},     {"predict", required_argument, 0, OPT_PREDICT},
        {"images", required_argument, 0, OPT_IMAGES}, {"out", required_argument, 0, OPT_OUT},
        {"init-from", required_argument, 0, OPT_INIT_FROM}, {"init-exclude", required_argument, 0, OPT_INIT_EXCLUDE},
        {"save-every", required_argument, 0, OPT_SAVE_EVERY}, {"keep-best", no_argument, 0, OPT_KEEP_BEST},
        {"resume-if-exists", no_argument, 0, OPT_RESUME_IF_EXISTS},
        {"print-placement", no_argument, 0, OPT_PRINT_PLACEMENT}, {"log-every", required_argument, 0, OPT_LOG_EVERY},
        {"verbose", no_argument, 0, OPT_VERBOSE}, {"list-layers", no_argument, 0, OPT_LIST_LAYERS},
        {"json", no_argument, 0, OPT_JSON}, {"markdown", no_argument, 0, OPT_MARKDOWN},
        {"tensorboard", required_argument, 0, OPT_TENSORBOARD}, {0, 0, 0, 0}};
    opterr = 0;
    int ch, idx, list_layers = 0, list_format = LAYER_LIST_TEXT, format_given = 0;
    long v;
    while ((ch = getopt_long(argc, argv, ":c:e:b:l:s:t:S:qh", longopts, &idx)) != -1) {
        switch (ch) {
        case 'c': c->config = optarg; break;
        case 'e': TRY(cli_add_set(c, "net.epochs=%s", optarg)); break;
        case 'b': TRY(cli_add_set(c, "net.batch=%s", optarg)); break;
        case 'l': TRY(cli_add_set(c, "net.lr=%s", optarg)); break;
        case 's': TRY(cli_add_set(c, "net.seed=%s", optarg)); break;
        case 't': TRY(cli_add_set(c, "net.threads=%s", optarg)); break;
        case 'S': TRY(cli_add_set(c, "%s", optarg)); break;
        case OPT_BACKEND: TRY(cli_add_set(c, "net.backend=%s", optarg)); break;
        case OPT_COMM: TRY(cli_add_set(c, "parallel.comm=%s", optarg)); break;
        case OPT_BUCKET: TRY(cli_add_set(c, "parallel.bucket_kb=%s", optarg)); break;
        case OPT_NO_OVERLAP: TRY(cli_add_set(c, "parallel.overlap=%s", "0")); break;
        case OPT_SCALING: TRY(cli_add_set(c, "parallel.scaling=%s", optarg)); break;
        case OPT_STEPS:
            if (parse_int(optarg, 1, 1L << 40, &v)) return ERR(ST_INPUT, "--steps: '%s' is not a positive integer", optarg);
            c->opts.max_steps = v;
            break;
        case OPT_METRICS: c->opts.metrics_path = optarg; break;
        case OPT_BASELINE: c->opts.baseline_path = optarg; break;
        case OPT_TRACE: c->opts.trace_dir = optarg; break;
        case OPT_TENSORBOARD: c->opts.tensorboard_dir = optarg; break;
        case OPT_SAVE: c->opts.save_path = optarg; break;
        case OPT_RESUME: c->opts.resume_path = optarg; break;
        case OPT_RESUME_IF_EXISTS: c->resume_if_exists = 1; break;
        case OPT_PRINT_PLACEMENT: c->print_placement = 1; break;
        case OPT_LOG_EVERY: {
            char *end = NULL;
            errno = 0;
            const double s = strtod(optarg, &end);
            if (end == optarg || *end || errno || !(s >= 0) || s > 1e6)
                return ERR(ST_INPUT, "--log-every: '%s' is not a number of seconds in [0, 1e6]", optarg);
            c->opts.log_every_s = s;
            break;
        }
        case OPT_VERBOSE: c->opts.verbose = 1; break;
        case OPT_LIST_LAYERS: list_layers = 1; break;
        case OPT_JSON: list_format = LAYER_LIST_JSON, format_given = 1; break;
        case OPT_MARKDOWN: list_format = LAYER_LIST_MARKDOWN, format_given = 1; break;
        case OPT_PRINT_CONFIG: c->print_config = 1; break;
        case OPT_PRINT_MODEL: c->print_model = 1; break;
        case OPT_EVAL: c->opts.eval_path = optarg; break;
        case OPT_PREDICT: c->opts.predict_path = optarg; break;
        case OPT_IMAGES:
            if (c->opts.n_images == TRAIN_IMAGES_MAX) return ERR(ST_INPUT, "--images: at most %d of them", TRAIN_IMAGES_MAX);
            if (!c->opts.images_path) c->opts.images_path = optarg;
            c->opts.images_paths[c->opts.n_images++] = optarg;
            break;
        case OPT_OUT: c->opts.out_path = optarg; break;
        case OPT_INIT_FROM: c->opts.init_from = optarg; break;
        case OPT_INIT_EXCLUDE: c->opts.init_exclude = optarg; break;
        case OPT_SAVE_EVERY:
            if (parse_int(optarg, 1, 1000000, &v))
                return ERR(ST_INPUT, "--save-every: '%s' is not a positive number of epochs", optarg);
            c->opts.save_every = (int)v;
            break;
        case OPT_KEEP_BEST: c->opts.keep_best = 1; break;
        case 'q': g_quiet = 1; break;
        case 'h':
            if (launcher_rank() == 0) usage(stdout);
            return -1;
        case OPT_VERSION:
            if (launcher_rank() == 0) printf("trainer (ddp-cnn) %s\n", DDP_VERSION);
            return -1;
        case ':': return ERR(ST_INPUT, "option %s needs a value (see --help)", argv[optind - 1]);
        default: return ERR(ST_INPUT, "unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) return ERR(ST_INPUT, "unexpected argument '%s' (see --help)", argv[optind]);
    if (format_given && !list_layers) return ERR(ST_INPUT, "--json and --markdown are for --list-layers");
    if (list_layers) {  // the layer registry, as --help: nothing else runs
        if (launcher_rank() == 0) layer_kinds_print(stdout, list_format);
        return -1;
    }
    TRY(cli_check(c));
    cli_resume_if_exists(c);
    if (!c->config && !cli_config_checkpoint(c))
        return ERR(ST_INPUT, "--config FILE is required without a checkpoint (--resume, --eval, --predict, --init-from) "
                             "that holds one (e.g. configs/fashion_mnist_cnn.cfg; see --help)");
    // The CSV alone on stdout: no log lines between its rows.
    if (c->opts.predict_path && !c->opts.out_path) g_quiet = 1;
    return ST_OK;
}

// A progress bar only for a person at a terminal. Open MPI gives every rank a pseudo-terminal as stdout even
// when mpirun's own output goes to a file, so under mpirun ask what mpirun (our parent) writes to.
static int stdout_is_terminal(void) {
    if (!isatty(STDOUT_FILENO)) return 0;
    if (!getenv("OMPI_COMM_WORLD_RANK")) return 1;
    char proc[64], target[256];
    snprintf(proc, sizeof proc, "/proc/%d/fd/1", (int)getppid());
    ssize_t n = readlink(proc, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = '\0';
    return strncmp(target, "/dev/pts/", 9) == 0 || strncmp(target, "/dev/tty", 8) == 0;
}

static void on_signal(int sig) {
    (void)sig;
    g_stop_requested = 1;
}

// A stop signal only sets a flag, from the first instruction of main on: training stops at the next agreed step
// boundary (checkpoint saved), --eval and --predict between batches, and a signal during start-up ends the run
// once set-up is agreed -- exit 5 with one line in every case, never a silent death. SA_RESTART: a read or write
// interrupted by the signal goes on. SIGUSR1/SIGUSR2: what mpirun forwards to the ranks (it turns a TERM or INT
// of its own into a kill of the job); the job scripts and run.sh translate a TERM/INT/HUP sent to them into one
// of these.
static void stop_signals_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    const int stop_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++) sigaction(stop_signals[i], &sa, NULL);
}

// OpenBLAS starts its own thread pool when the library is loaded, before main, and each of its threads maps a
// 128 MiB buffer at once; under an address-space limit (ulimit -v) OpenBLAS 0.3.21's blas_memory_alloc retries a
// failed map forever, and the process spins at 100 % CPU and hangs in the next fork or exit (they join that
// thread). The trainer runs every GEMM single-threaded on its own pool (backend_cpu.c), so OpenBLAS's pool is
// never used. The environment is read only by the library's constructor, and a variable set before it (in a
// preinit function) is lost when libc sets up the environment, so: when a memory limit is set, the trainer
// executes itself again with OPENBLAS_NUM_THREADS=1 (same pid, arguments and environment otherwise); the spinning
// thread goes with the old image. backend_cpu.c then checks that its own threads' GEMM buffers can be mapped
// before the first GEMM (exit 1 naming them instead of the spin).
static void openblas_single_thread(char **argv) {
    struct rlimit as, data;
    int limited = (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) ||
                  (getrlimit(RLIMIT_DATA, &data) == 0 && data.rlim_cur != RLIM_INFINITY);
    const char *v = getenv("OPENBLAS_NUM_THREADS");
    if (!limited || (v && strcmp(v, "1") == 0)) return;
    if (setenv("OPENBLAS_NUM_THREADS", "1", 1) != 0) return;
    execv("/proc/self/exe", argv);  // returns only on failure: carry on as we are
}

// The log on stdout may go to a pipe that closes (`trainer ... | head -1`) or a full disk. Neither may kill the
// run before its checkpoint: SIGPIPE is ignored, a failed write is remembered (log_stdout), training and --save
// go on, and the run ends with exit 1 and one line on stderr saying the log was lost.
static int stdout_final_status(int st) {
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) log_stdout_failed(errno);
    int e = log_stdout_errno();
    if (st != ST_OK || e == 0) return st;
    st = ERR(ST_RUNTIME, "stdout: writing the log failed (%s); the run itself completed%s, but its output was lost",
             strerror(e), g_save_given ? " and saved its checkpoint" : "");
    fprintf(stderr, "trainer: error: %s\n", err_msg());
    return st;
}

static void print_error(void) {
    int st = err_status();
    if (st == ST_INTERRUPTED)  // asked for, not a failure: no source location
        fprintf(stderr, "trainer: %s\n", err_msg());
    else if (st == ST_INPUT)
        fprintf(stderr, "trainer: error: %s\n", err_msg());
    else
        fprintf(stderr, "trainer: error: %s [rank %d on %s, %s]\n", err_msg(), g_rank, g_host, err_where());
    fflush(stderr);
}

// The configuration as every rank must hold it: the effective INI (after --set) without the keys that may
// differ per host (threads) and the run settings from the command line. (The data the files hold is compared
// once loaded, in the trainer's set-up.)
static char *run_description(const net_config *cfg, const train_opts *o) {
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    if (!f) return NULL;
    char *ini = config_text(cfg);
    if (ini) {
        for (const char *p = ini; *p;) {
            size_t n = strcspn(p, "\n");
            if (strncmp(p, "threads=", 8) != 0) fprintf(f, "%.*s\n", (int)n, p);
            p += n + (p[n] == '\n');
        }
        free(ini);
    }
    // The run options that decide which collectives, saves and evaluations run: an MPMD launch where they differ
    // would leave ranks in different collectives (MPI_ERR_TRUNCATE, or a watchdog timeout) -- refused by name.
    const struct {
        const char *opt;
        int given;
    } run[] = {{"--resume", o->resume_path != NULL}, {"--save", o->save_path != NULL}, {"--keep-best", o->keep_best},
               {"--metrics", o->metrics_path != NULL}, {"--trace", o->trace_dir != NULL},
               {"--init-from", o->init_from != NULL}, {"--eval", o->eval_path != NULL},
               {"--predict", o->predict_path != NULL}, {"--baseline", o->baseline_path != NULL}};
    fprintf(f, "[options]\n--steps=%lld\n--save-every=%d\n", o->max_steps, o->save_every);
    for (size_t i = 0; i < sizeof run / sizeof run[0]; i++) fprintf(f, "%s=%s\n", run[i].opt, run[i].given ? "given" : "not given");
    fclose(f);
    return text;
}

// Every rank's configuration status, then the configuration itself: a rank that could not read its config
// reports why (the others say which rank), and ranks that read different ones (an MPMD launch, another --set)
// are refused before any work (exit 2 everywhere, the first difference named).
static int agree_config(comm *cm, int cfg_st, const net_config *cfg, const train_opts *o) {
    TRY(comm_agree(cm, cfg_st, "start-up"));
    char *text = run_description(cfg, o);
    // Without the text this rank cannot take part: a local failure (main aborts the job).
    if (!text) return ERR(ST_RUNTIME, "rank %d (%s): out of host memory describing the configuration", g_rank, g_host);
    int st = comm_agree_text(cm, text, "the configuration");
    free(text);
    return st;
}

// A checkpoint's stored configuration (metadata config_ini, the --print-config text of the run that wrote it).
static int config_from_checkpoint(const char *path, net_config *cfg) {
    ckpt_file *f = NULL;
    TRY(ckpt_load(path, &f));
    const char *text = ckpt_meta(f, "config_ini");
    char origin[CFG_PATH_MAX];
    int n = snprintf(origin, sizeof origin, "%s (its stored config)", path);
    int st;
    if (!text)
        st = ERR(ST_INPUT, "%s: holds no stored configuration (metadata 'config_ini': written by an older ddp-cnn or "
                           "another program); give --config FILE", path);
    else if (n < 0 || (size_t)n >= sizeof origin)
        st = ERR(ST_INPUT, "checkpoint path too long: %s", path);
    else
        st = config_load_text(text, origin, cfg);
    ckpt_free(f);
    return st;
}

static int config_read(const cli *c, net_config *cfg) {
    if (c->config) TRY(config_load(c->config, cfg));  // --config wins over a checkpoint's stored one
    else TRY(config_from_checkpoint(cli_config_checkpoint(c), cfg));
    for (int i = 0; i < c->n_sets; i++) TRY(config_set(cfg, c->sets[i]));
    return config_validate(cfg);
}

int main(int argc, char **argv) {
    stop_signals_install();
    g_prog = "trainer";
    openblas_single_thread(argv);
    signal(SIGPIPE, SIG_IGN);  // a closed stdout is an error to report, not a reason to die (stdout_final_status)
    static cli c;
    c.opts.log_every_s = 10;
    int st = cli_parse(argc, argv, &c);
    if (st == -1) return 0;
    if (st != ST_OK) {
        if (launcher_rank() == 0) print_error();
        return st;
    }
    c.opts.progress = stdout_is_terminal();
    static test_hooks hooks;  // every hook off; the test trainer reads the DDP_TEST_* variables (src/test_hooks.h)
    test_hooks_off(&hooks);
#ifdef DDP_TESTING
    if ((st = test_hooks_from_env(&hooks)) != ST_OK) {
        if (launcher_rank() == 0) print_error();
        return st;
    }
#endif
    c.opts.hooks = &hooks;

    // Local: the configuration. Its status is agreed on once the ranks can talk.
    static net_config cfg;
    const int cfg_st = config_read(&c, &cfg);
    if (c.print_model) {
        int st_print = cfg_st;
        if (launcher_rank() == 0) {
            if (st_print == ST_OK) st_print = print_model(&cfg);
            if (st_print != ST_OK) print_error();
        }
        return st_print == ST_OK ? stdout_final_status(ST_OK) : st_print;
    }
    if (c.print_config) {
        int st_print = cfg_st;
        if (launcher_rank() == 0) {
            // normalize=1 without mean/std: the training set's, as a run computes them at start-up
            if (st_print == ST_OK) st_print = augment_resolve(&cfg);
            if (st_print == ST_OK) config_print(&cfg, stdout);
            else print_error();
        }
        return st_print == ST_OK ? stdout_final_status(ST_OK) : st_print;
    }
    const double timeout_s = cfg_st == ST_OK ? cfg.comm_timeout_s : COMM_DEFAULT_TIMEOUT_S;

    // From here to the end every wait is bounded: collectives by the watchdog, the calls inside MPI that
    // cannot be polled (start-up, creating and freeing communicators) by the deadline guard.
    comm_deadline_arm(timeout_s, "start-up (MPI_Init_thread)");
    st = comm_world_init(&argc, &argv);
    comm_deadline_disarm();
    if (st != ST_OK) {
        print_error();
        return ST_RUNTIME;
    }
    stop_signals_install();  // again: the MPI library may have installed its own
    // A process alone in its MPI world while its launcher says the job has more was started without MPI.
    st = placement_check_launch(g_world);
    if (st != ST_OK) {
        print_error();
        comm_world_finalize();
        return st;
    }
    comm *cm = NULL;
    st = comm_open(&cm, timeout_s);
    if (st != ST_OK) {
        print_error();
        comm_abort(NULL, st);
    }
    // The output plan: every file this run may write, checked against its inputs and each other before any work.
    int plan_st = cfg_st;
    if (plan_st == ST_OK && !c.print_placement) plan_st = train_outputs_check(&cfg, &c.opts, g_rank);
    st = agree_config(cm, plan_st, &cfg, &c.opts);
    if (st == ST_OK && c.print_placement) {
        st = placement_print(comm_get_info(cm), cfg.backend, hooks.fake_gpus);
        if (st != ST_OK) print_error();
        const int fin = comm_finalize(cm);
        return st != ST_OK ? st : fin;
    }
    if (st == ST_OK) st = comm_agree(cm, comm_start(cm, cfg.comm), "start-up");

    if (st != ST_OK) goto done;

    train_result res;
    // Training, or using a trained model: main chooses.
    st = c.opts.eval_path || c.opts.predict_path ? train_use_run(&cfg, &c.opts, cm, &res)
                                                  : train_run(&cfg, &c.opts, cm, &res);
    if (st == ST_OK && !res.used) {
        if (res.nothing_left)
            ALWAYS0("done: nothing left to train: the checkpoint is at step %lld, %d epoch(s) done, and this run stops "
                    "at %s %lld (raise it to train on)\n", res.steps, res.epoch,
                    res.epoch >= cfg.epochs ? "net.epochs / --epochs" : "--steps",
                    res.epoch >= cfg.epochs ? (long long)cfg.epochs : c.opts.max_steps);
        else if (res.epochs_done > 0)
            ALWAYS0("done: %d epoch(s), %lld steps in %.2f s training time; test loss %.4f, test accuracy %.4f\n",
                    res.epochs_done, res.steps, res.train_s, res.test_loss, res.test_acc);
        else
            ALWAYS0("done: %lld steps in %.2f s training time; stopped before the end of an epoch, so not "
                    "evaluated\n", res.steps, res.train_s);
    }
    train_result_free(&res);
done:
    if (st != ST_OK && err_collective()) {
        // Every rank reached the same error at the same point: report once, exit cleanly.
        if (g_rank == 0 || err_origin()) print_error();
    } else if (st != ST_OK) {
        print_error();
        comm_abort(cm, st);
    }
    err_clear();
    const int fin = comm_finalize(cm);  // bounded: a peer that never arrives is exit 4, not a hang
    if (fin != ST_OK) {
        print_error();
        comm_abort(cm, fin);
    }
    g_save_given = c.opts.save_path != NULL;
    return stdout_final_status(st);
}
