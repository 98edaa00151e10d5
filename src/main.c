// main.c — the trainer's command line. The only place that exits: it maps a status to an exit code, and aborts
// all ranks when a failure is local to one rank (so no rank waits forever in a collective).
#include <getopt.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "common.h"
#include "config.h"
#include "placement.h"
#include "train.h"

#define MAX_SETS 64

static void usage(FILE *f) {
    fprintf(f,
            "usage: trainer --config FILE [options]\n"
            "       mpirun -np N trainer --config FILE [options]\n"
            "\n"
            "Trains the CNN described by an INI config on one rank per process (one GPU per rank with\n"
            "backend=cuda), averaging gradients across ranks in buckets overlapped with backward.\n"
            "\n"
            "Options (each shortcut is the same as the --set shown):\n"
            "  --config FILE       model, data and run configuration (configs/*.cfg)\n"
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
            "  --save FILE         write a safetensors checkpoint after each epoch and when stopped\n"
            "  --resume FILE       continue from a checkpoint (bit-identical to an uninterrupted run)\n"
            "  --resume-if-exists  resume from the --save FILE when it exists, else start fresh (requeued jobs)\n"
            "  --print-config      print the effective configuration and exit\n"
            "  --print-placement   every rank prints its host, rank, node-local rank and GPU, then all exit\n"
            "  --quiet             print only errors and the final summary\n"
            "  --help              this text\n"
            "  --version           print the version\n"
            "\n"
            "Exit codes: 0 success, 1 runtime failure, 2 bad input (CLI, config, data, checkpoint),\n"
            "3 training diverged (NaN/Inf), 4 communication failure (peer died, timeout, replica mismatch),\n"
            "5 stopped by SIGINT/SIGTERM.\n");
}

// Rank before MPI_Init, so that --help and CLI errors print once under mpirun.
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
       OPT_SAVE, OPT_RESUME, OPT_PRINT_CONFIG, OPT_VERSION, OPT_TRACE, OPT_RESUME_IF_EXISTS,
       OPT_PRINT_PLACEMENT };

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
        {"print-config", no_argument, 0, OPT_PRINT_CONFIG}, {"trace", required_argument, 0, OPT_TRACE},
        {"resume-if-exists", no_argument, 0, OPT_RESUME_IF_EXISTS},
        {"print-placement", no_argument, 0, OPT_PRINT_PLACEMENT}, {0, 0, 0, 0}};
    opterr = 0;
    int ch, idx;
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
        case OPT_SAVE: c->opts.save_path = optarg; break;
        case OPT_RESUME: c->opts.resume_path = optarg; break;
        case OPT_RESUME_IF_EXISTS: c->resume_if_exists = 1; break;
        case OPT_PRINT_PLACEMENT: c->print_placement = 1; break;
        case OPT_PRINT_CONFIG: c->print_config = 1; break;
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
    if (!c->config) return ERR(ST_INPUT, "--config FILE is required (e.g. configs/fashion_mnist_cnn.cfg; see --help)");
    if (c->resume_if_exists) {
        // A requeued job runs the same command again: continue from what its first run saved.
        if (!c->opts.save_path) return ERR(ST_INPUT, "--resume-if-exists needs --save FILE (the checkpoint to resume)");
        if (c->opts.resume_path) return ERR(ST_INPUT, "--resume and --resume-if-exists exclude each other");
        if (access(c->opts.save_path, F_OK) == 0) c->opts.resume_path = c->opts.save_path;
    }
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

static void print_error(void) {
    int st = err_status();
    if (st == ST_INPUT)
        fprintf(stderr, "trainer: error: %s\n", err_msg());
    else
        fprintf(stderr, "trainer: error: %s [rank %d on %s, %s]\n", err_msg(), g_rank, g_host, err_where());
    fflush(stderr);
}

int main(int argc, char **argv) {
    static cli c;
    int st = cli_parse(argc, argv, &c);
    if (st == -1) return 0;
    if (st != ST_OK) {
        if (launcher_rank() == 0) print_error();
        return st;
    }
    c.opts.progress = stdout_is_terminal();

    int provided = 0;
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "trainer: error: MPI_Init_thread failed\n");
        return ST_RUNTIME;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_world);

    // Configuration errors are the same on every rank: rank 0 reports, all exit with the same code.
    static net_config cfg;
    st = placement_check_launch(g_world);
    if (st == ST_OK) st = config_load(c.config, &cfg);
    for (int i = 0; st == ST_OK && i < c.n_sets; i++) st = config_set(&cfg, c.sets[i]);
    if (st == ST_OK) st = config_validate(&cfg);
    if (st == ST_OK && c.print_config) {
        if (g_rank == 0) config_print(&cfg, stdout);
        MPI_Finalize();
        return 0;
    }
    comm *cm = NULL;
    if (st == ST_OK) st = comm_create(&cm, cfg.comm, cfg.comm_timeout_s);
    if (st != ST_OK) {
        if (g_rank == 0) print_error();
        MPI_Finalize();
        return st;
    }
    if (c.print_placement) {
        st = placement_print(comm_get_info(cm), cfg.backend);
        if (st != ST_OK) print_error();
        comm_finalize(cm);
        return st;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    train_result res;
    st = train_run(&cfg, &c.opts, cm, &res);
    if (st == ST_OK) {
        if (res.epochs_done > 0)
            ALWAYS0("done: %d epoch(s), %lld steps in %.2f s training time; test loss %.4f, test accuracy %.4f\n",
                    res.epochs_done, res.steps, res.train_s, res.test_loss, res.test_acc);
        else
            ALWAYS0("done: %lld steps in %.2f s training time; stopped before the end of an epoch, so not "
                    "evaluated\n", res.steps, res.train_s);
    } else if (err_collective()) {
        // Every rank reached the same error at the same point: report once, exit cleanly.
        if (g_rank == 0 || err_origin()) print_error();
    } else {
        print_error();
        comm_abort(cm, st);
    }
    train_result_free(&res);
    comm_finalize(cm);
    return st;
}
