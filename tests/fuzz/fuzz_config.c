// fuzz_config.c — libFuzzer target: the INI config parser (config_load, and config_load_text on the same bytes:
// a checkpoint's stored config), --set (config_set), validation (config_validate) and printing (config_print) of
// what validated.
// Input: the config file's text, optionally followed by NUL-separated --set assignments (at most 8).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "config.h"
#include "fuzz_util.h"

// The printed effective configuration (--print-config) is itself a config: it must load, validate, and print
// the same text again (after its first line, which names the file).
static void print_to_string(const net_config *cfg, char **text, size_t *n) {
    FILE *f = open_memstream(text, n);
    if (!f) fuzz_fail(__FILE__, __LINE__, "open_memstream");
    config_print(cfg, f);
    fclose(f);
}

static void check_round_trip(const net_config *cfg) {
    static fuzz_file printed;
    static net_config again;
    size_t n1 = 0, n2 = 0;
    char *t1 = NULL, *t2 = NULL;
    print_to_string(cfg, &t1, &n1);
    fuzz_file_set(&printed, t1, n1);
    err_clear();
    int st = config_load(printed.path, &again);
    if (st == ST_OK) st = config_validate(&again);
    if (st != ST_OK) fprintf(stderr, "printed config does not load: %s\n--\n%s--\n", err_msg(), t1);
    FUZZ_CHECK(st == ST_OK);
    print_to_string(&again, &t2, &n2);
    const char *b1 = strchr(t1, '\n'), *b2 = strchr(t2, '\n');
    if (strcmp(b1, b2) != 0) fprintf(stderr, "printed config changes when reloaded:\n--\n%s--\n%s--\n", t1, t2);
    FUZZ_CHECK(strcmp(b1, b2) == 0);
    // Numbers must survive exactly: a printed config reused for a rerun must give the same run.
    const double a[] = {cfg->lr, cfg->beta1, cfg->beta2, cfg->eps, cfg->momentum, cfg->weight_decay,
                        cfg->warmup_epochs, cfg->comm_timeout_s};
    const double b[] = {again.lr, again.beta1, again.beta2, again.eps, again.momentum, again.weight_decay,
                        again.warmup_epochs, again.comm_timeout_s};
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) {
        if (a[i] != b[i]) fprintf(stderr, "printed config changes number #%zu: %.17g -> %.17g\n", i, a[i], b[i]);
        FUZZ_CHECK(a[i] == b[i]);
    }
    free(t1);
    free(t2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fuzz_file file;
    static net_config cfg;
    static FILE *devnull;
    if (!devnull && !(devnull = fopen("/dev/null", "w"))) fuzz_fail(__FILE__, __LINE__, "fopen /dev/null");
    const uint8_t *nul = memchr(data, '\0', size);
    size_t text_n = nul ? (size_t)(nul - data) : size;
    fuzz_file_set(&file, data, text_n);
    // The assignments, as NUL-terminated strings in a copy (the input itself is not NUL-terminated).
    size_t rest = size - text_n;
    char *sets = malloc(rest + 1);
    if (!sets) return 0;
    if (rest) memcpy(sets, data + text_n, rest);
    sets[rest] = '\0';
    // The same text from memory (a checkpoint's stored config) parses to the same verdict.
    static net_config from_text;
    char *text = malloc(text_n + 1);
    if (!text) {
        free(sets);
        return 0;
    }
    memcpy(text, data, text_n);
    text[text_n] = '\0';
    err_clear();
    int st_text = config_load_text(text, "fuzz (stored config)", &from_text);
    free(text);
    err_clear();
    int st = config_load(file.path, &cfg);
    FUZZ_CHECK(st == st_text);
    const char *p = sets + (rest ? 1 : 0), *end = sets + rest;
    for (int i = 0; st == ST_OK && i < 8 && p < end; i++) {
        st = config_set(&cfg, p);
        p += strlen(p) + 1;
    }
    if (st == ST_OK) st = config_validate(&cfg);
    if (st == ST_OK) {
        FUZZ_CHECK(cfg.n_layers >= 1 && cfg.n_layers <= CFG_MAX_LAYERS);
        FUZZ_CHECK(cfg.layers[cfg.n_layers - 1].type == LAYER_SOFTMAX);
        FUZZ_CHECK(cfg.batch >= 1 && cfg.channels >= 1 && cfg.height >= 1 && cfg.width >= 1);
        config_print(&cfg, devnull);
        check_round_trip(&cfg);
    } else {
        FUZZ_CHECK(err_status() == st && err_msg()[0] != '\0');
    }
    free(sets);
    return 0;
}
