//! Bounded waits that keep one timer for a whole loop instead of one per wait.
//!
//! A read loop that wraps every read in `tokio::time::timeout` registers and cancels a timer
//! per frame. A [`Deadline`] keeps one timer across its waits: each
//! [`Deadline::within`] only computes the instant it gives up at, and the timer is re-armed
//! only when it would fire after that instant, or has fired before it (a later wait), so a
//! busy loop touches the timer about once per bound rather than once per frame. The bound
//! itself is unchanged: a wait fails once `limit` has passed since it began, as with
//! `tokio::time::timeout`.
//!
//! The timer is also polled only when it must be (not armed yet, armed too late, or for
//! another task). That matters under the simulator, whose `Sleep` adds an entry to the timer
//! heap on every poll: a timeout around a read woken by every packet left one entry per
//! packet, each waking the task again when it expired.
//!
//! The runtime is given, not named (this crate has none): `Deadline::new(Instant::now,
//! sleep_until)` with the `tokio` alias's `tokio::time::{Instant, sleep_until}`.

use std::future::{Future, poll_fn};
use std::ops::Add;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The bound passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// A timer for a sequence of bounded waits (one at a time), such as the reads of a loop.
/// `I` is the runtime's instant, `S` its sleep future.
pub struct Deadline<I, S> {
    now: fn() -> I,
    sleep_until: fn(I) -> S,
    /// The armed timer (a dropped one is cancelled), and the instant it is set to.
    sleep: Option<(Pin<Box<S>>, I)>,
    /// The task the armed timer wakes.
    waker: Option<Waker>,
}

impl<I, S> Deadline<I, S>
where
    I: Copy + Ord + Add<Duration, Output = I>,
    S: Future<Output = ()>,
{
    /// A deadline on the runtime whose clock is `now` and whose timers are `sleep_until`.
    pub fn new(now: fn() -> I, sleep_until: fn(I) -> S) -> Deadline<I, S> {
        Deadline {
            now,
            sleep_until,
            sleep: None,
            waker: None,
        }
    }

    /// `future`, or [`Elapsed`] if it does not complete within `limit` from now.
    pub async fn within<F: Future>(
        &mut self,
        limit: Duration,
        future: F,
    ) -> Result<F::Output, Elapsed> {
        let at = (self.now)() + limit;
        let mut future = pin!(future);
        poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            self.poll_until(at, cx).map(|()| Err(Elapsed))
        })
        .await
    }

    /// Ready once `at` has passed; otherwise makes sure the timer wakes this task by then.
    fn poll_until(&mut self, at: I, cx: &mut Context<'_>) -> Poll<()> {
        let now = (self.now)();
        if now >= at {
            return Poll::Ready(());
        }
        let armed = match (&self.sleep, &self.waker) {
            (Some((_, armed_at)), Some(waker)) => {
                *armed_at <= at && now < *armed_at && waker.will_wake(cx.waker())
            }
            _ => false,
        };
        if armed {
            // The timer wakes this task no later than `at`; it checks again then.
            return Poll::Pending;
        }
        let mut sleep = Box::pin((self.sleep_until)(at));
        // `at` is in the future: this registers the timer with this task's waker.
        let _ = sleep.as_mut().poll(cx);
        self.sleep = Some((sleep, at));
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// `future`, or [`Elapsed`] if it does not complete within `limit`: a one-off
/// [`Deadline::within`], whose timer is polled only when it must be.
pub async fn timeout<I, S, F>(
    now: fn() -> I,
    sleep_until: fn(I) -> S,
    limit: Duration,
    future: F,
) -> Result<F::Output, Elapsed>
where
    I: Copy + Ord + Add<Duration, Output = I>,
    S: Future<Output = ()>,
    F: Future,
{
    Deadline::new(now, sleep_until).within(limit, future).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::Arc;
    use std::task::Wake;

    // A manual clock in milliseconds and a timer on it that counts how often it is polled.
    thread_local! {
        static NOW: Cell<u64> = const { Cell::new(0) };
        static POLLS: Cell<u32> = const { Cell::new(0) };
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct Ms(u64);

    impl Add<Duration> for Ms {
        type Output = Ms;
        fn add(self, d: Duration) -> Ms {
            Ms(self.0 + d.as_millis() as u64)
        }
    }

    fn now() -> Ms {
        Ms(NOW.with(Cell::get))
    }

    fn advance(ms: u64) {
        NOW.with(|n| n.set(n.get() + ms));
    }

    struct Timer(Ms);

    impl Future for Timer {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            POLLS.with(|p| p.set(p.get() + 1));
            if now() >= self.0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn timer(at: Ms) -> Timer {
        Timer(at)
    }

    fn polls() -> u32 {
        POLLS.with(Cell::get)
    }

    struct Noop;

    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    /// A future that is pending until `ready` is set.
    struct Gate<'a>(&'a Cell<bool>);

    impl Future for Gate<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.0.get() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn poll_once<F: Future>(future: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_wait_completes_or_elapses_at_its_own_bound() {
        let waker = Waker::from(Arc::new(Noop));
        let mut deadline = Deadline::new(now, timer);
        let ready = Cell::new(false);
        {
            let mut wait = pin!(deadline.within(Duration::from_millis(100), Gate(&ready)));
            assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Pending);
            advance(99);
            assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Pending);
            advance(1);
            assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Ready(Err(Elapsed)));
        }
        let mut wait = pin!(deadline.within(Duration::from_millis(100), Gate(&ready)));
        assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Pending);
        ready.set(true);
        assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Ready(Ok(())));
    }

    #[test]
    fn the_timer_is_polled_only_when_it_must_be() {
        let waker = Waker::from(Arc::new(Noop));
        let mut deadline = Deadline::new(now, timer);
        let ready = Cell::new(false);
        let start = polls();
        {
            let mut wait = pin!(deadline.within(Duration::from_millis(100), Gate(&ready)));
            for _ in 0..10 {
                assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Pending);
            }
            assert_eq!(polls() - start, 1, "armed once for many wake-ups");
            ready.set(true);
            assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Ready(Ok(())));
        }
        // A later wait keeps the earlier timer until it fires, then re-arms for its own bound.
        ready.set(false);
        advance(50);
        {
            let mut wait = pin!(deadline.within(Duration::from_millis(100), Gate(&ready)));
            assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Pending);
            assert_eq!(
                polls() - start,
                1,
                "the timer armed for 100 ms still wakes us first"
            );
            advance(50);
            assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Pending);
            assert_eq!(polls() - start, 2, "re-armed for 150 ms");
            advance(50);
            assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Ready(Err(Elapsed)));
        }
        // A shorter bound than the armed timer re-arms at once; so does another task.
        {
            let mut wait = pin!(deadline.within(Duration::from_secs(60), Gate(&ready)));
            assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Pending);
        }
        let armed = polls();
        let mut wait = pin!(deadline.within(Duration::from_millis(10), Gate(&ready)));
        assert_eq!(poll_once(wait.as_mut(), &waker), Poll::Pending);
        assert_eq!(polls(), armed + 1);
        let other = Waker::from(Arc::new(Noop));
        assert_eq!(poll_once(wait.as_mut(), &other), Poll::Pending);
        assert_eq!(polls(), armed + 2);
        advance(10);
        assert_eq!(poll_once(wait.as_mut(), &other), Poll::Ready(Err(Elapsed)));
    }

    #[test]
    fn a_ready_future_never_arms_the_timer() {
        let start = polls();
        let result =
            futures::executor::block_on(timeout(now, timer, Duration::from_millis(5), async { 7 }));
        assert_eq!(result, Ok(7));
        assert_eq!(polls(), start);
    }
}
