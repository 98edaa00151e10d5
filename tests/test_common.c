// test_common.c — RNG determinism and distribution, strict number parsing, the first-error-wins trace.
#include <string.h>

#include "common.h"
#include "test_util.h"

static void test_rng_is_deterministic_and_uniform(void **state) {
    (void)state;
    rng a, b;
    rng_seed(&a, 123);
    rng_seed(&b, 123);
    for (int i = 0; i < 1000; i++) assert_true(rng_u64(&a) == rng_u64(&b));
    int hist[10] = {0};
    for (int i = 0; i < 100000; i++) {
        uint32_t v = rng_below(&a, 10);
        assert_true(v < 10);
        hist[v]++;
    }
    for (int k = 0; k < 10; k++) assert_true(hist[k] > 9500 && hist[k] < 10500);
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        float u = rng_uniform(&a);
        assert_true(u >= 0.0f && u < 1.0f);
        sum += u;
    }
    assert_true(sum / 100000 > 0.49 && sum / 100000 < 0.51);
    assert_true(rng_mix(1, 2) != rng_mix(2, 1));
}

static void test_parse_is_strict(void **state) {
    (void)state;
    long v;
    double d;
    assert_int_equal(parse_int("42", 0, 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_not_equal(parse_int("42x", 0, 100, &v), 0);
    assert_int_not_equal(parse_int("", 0, 100, &v), 0);
    assert_int_not_equal(parse_int("101", 0, 100, &v), 0);
    assert_int_not_equal(parse_int("99999999999999999999999", 0, 100, &v), 0);
    assert_int_equal(parse_float("1e-3", 0, 1, &d), 0);
    assert_true(d == 1e-3);
    assert_int_not_equal(parse_float("nan", 0, 1, &d), 0);
    assert_int_not_equal(parse_float("inf", 0, 1e300, &d), 0);
    assert_int_not_equal(parse_float("0.5.", 0, 1, &d), 0);
}

static void test_first_error_wins_and_is_one_line(void **state) {
    (void)state;
    err_clear();
    assert_int_equal(ERR(ST_INPUT, "a.idx: bad\nmagic"), ST_INPUT);
    assert_int_equal(ERR(ST_RUNTIME, "later"), ST_RUNTIME);
    assert_int_equal(err_status(), ST_INPUT);
    assert_string_equal(err_msg(), "a.idx: bad magic");
    assert_non_null(strstr(err_where(), "test_common.c:"));
    err_clear();
    assert_int_equal(err_status(), ST_OK);
    assert_string_equal(err_msg(), "");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng_is_deterministic_and_uniform),
        cmocka_unit_test(test_parse_is_strict),
        cmocka_unit_test(test_first_error_wins_and_is_one_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
