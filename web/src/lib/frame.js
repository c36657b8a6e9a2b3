// Run a function at most once per animation frame, however often it is asked for.

export function perFrame(fn, { request = globalThis.requestAnimationFrame, cancel = globalThis.cancelAnimationFrame } = {}) {
  let handle = null;
  const schedule = () => {
    if (handle === null) {
      handle = request(() => {
        handle = null;
        fn();
      });
    }
  };
  schedule.cancel = () => {
    if (handle !== null) cancel(handle);
    handle = null;
  };
  schedule.flush = () => {
    schedule.cancel();
    fn();
  };
  return schedule;
}
