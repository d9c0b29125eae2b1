/* Consumer of the installed C ABI: one 8-bit step with a known result. */
#include <qrmsprop/qrmsprop.h>

#include <math.h>
#include <stdio.h>

int main(void) {
  static float p[1000], g[1000];
  qrms_config cfg;
  qrms_optimizer_t opt = NULL;
  float expect;
  int i;
  for (i = 0; i < 1000; ++i) {
    p[i] = 1.0f;
    g[i] = 1.0f;
  }
  qrms_config_init(&cfg);
  cfg.min_8bit_size = 0;
  if (qrms_version() != QRMS_VERSION_NUMBER) {
    fprintf(stderr, "header %d, library %u\n", QRMS_VERSION_NUMBER, (unsigned)qrms_version());
    return 1;
  }
  if (qrms_optimizer_create(&opt, QRMS_RMSPROP_8BIT, &cfg, QRMS_DEVICE_CPU, 0) != QRMS_SUCCESS ||
      qrms_optimizer_add_param(opt, p, g, QRMS_FLOAT32, 1000, NULL) != QRMS_SUCCESS ||
      qrms_optimizer_step(opt, NULL) != QRMS_SUCCESS) {
    fprintf(stderr, "failed: %s\n", qrms_last_error());
    return 1;
  }
  qrms_optimizer_destroy(opt);
  /* s = (1 - 0.99) * 1, p = 1 - lr / (sqrt(s) + eps) */
  expect = 1.0f - 0.01f / (sqrtf(1.0f - 0.99f) + 1e-8f);
  if (fabsf(p[0] - expect) > 1e-6f || fabsf(p[999] - expect) > 1e-6f) {
    fprintf(stderr, "p[0] = %.9g, expected %.9g\n", p[0], expect);
    return 1;
  }
  printf("c_consumer: qrmsprop %u, p[0] = %.7f\n", (unsigned)qrms_version(), p[0]);
  return 0;
}
