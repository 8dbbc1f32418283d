//! `client top`'s full screen, drawn with crossterm: the alternate screen
//! in raw mode, lines drawn over the last ones, keys read with a timeout.
//!
//! The terminal is given back as it was (main screen, cooked mode, cursor
//! shown, lines wrapped) when the [`Screen`] is dropped, whether `top`
//! ends with q, Ctrl-C or an error; and by a panic hook before a panic's
//! message is printed, so the message is seen and the shell is usable.

use std::io::{self, Stdout, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Duration;

use crossterm::cursor::{Hide, MoveTo, Show};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::style::{Attribute, Print, SetAttribute};
use crossterm::terminal::{
    self, Clear, ClearType, DisableLineWrap, EnableLineWrap, EnterAlternateScreen,
    LeaveAlternateScreen,
};
use crossterm::{execute, queue};

use super::top::{Line, Style};

/// Whether a [`Screen`] holds the terminal (for the panic hook).
static OPEN: AtomicBool = AtomicBool::new(false);

/// What the user did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    /// q, Q, Esc or Ctrl-C.
    Quit,
    /// Another key, as its character.
    Key(char),
    /// The terminal changed size (or Ctrl-L): draw again.
    Redraw,
}

/// The terminal, in raw mode on the alternate screen, until dropped.
#[derive(Debug)]
pub(crate) struct Screen {
    out: Stdout,
}

impl Screen {
    /// Takes the terminal over: raw mode, the alternate screen, the cursor
    /// hidden, no line wrap.
    ///
    /// # Errors
    ///
    /// When stdout is no terminal, or the terminal cannot be set up (it is
    /// given back first).
    pub(crate) fn open() -> io::Result<Screen> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        terminal::enable_raw_mode()?;
        OPEN.store(true, Ordering::SeqCst);
        let mut screen = Screen { out: io::stdout() };
        execute!(screen.out, EnterAlternateScreen, Hide, DisableLineWrap)?;
        Ok(screen)
    }

    /// Draws `lines` from the top, over what was there, as many as fit,
    /// each cut at the screen's width.
    pub(crate) fn draw(&mut self, lines: &[Line]) -> io::Result<()> {
        let (width, height) = match terminal::size()? {
            (0, _) | (_, 0) => (80, 24),
            size => size,
        };
        for (row, line) in (0..height).zip(lines) {
            queue!(self.out, MoveTo(0, row))?;
            let attribute = match line.style {
                Style::Plain => None,
                Style::Strong => Some(Attribute::Bold),
                Style::Heading => Some(Attribute::Reverse),
            };
            if let Some(attribute) = attribute {
                queue!(self.out, SetAttribute(attribute))?;
            }
            let text: String = line.text.chars().take(usize::from(width)).collect();
            queue!(self.out, Print(text))?;
            if let Some(Attribute::Reverse) = attribute {
                // The heading's bar runs the width of the screen.
                let rest = usize::from(width).saturating_sub(line.text.chars().count());
                queue!(self.out, Print(" ".repeat(rest)))?;
            }
            if attribute.is_some() {
                queue!(self.out, SetAttribute(Attribute::Reset))?;
            }
            queue!(self.out, Clear(ClearType::UntilNewLine))?;
        }
        let drawn = u16::try_from(lines.len()).unwrap_or(u16::MAX).min(height);
        if drawn < height {
            queue!(self.out, MoveTo(0, drawn), Clear(ClearType::FromCursorDown))?;
        }
        self.out.flush()
    }

    /// Waits up to `timeout` for a key (or a change of size).
    pub(crate) fn input(&mut self, timeout: Duration) -> io::Result<Option<Input>> {
        if !event::poll(timeout)? {
            return Ok(None);
        }
        Ok(match event::read()? {
            Event::Key(key) if key.kind != KeyEventKind::Release => {
                let control = key.modifiers.contains(KeyModifiers::CONTROL);
                match key.code {
                    KeyCode::Char('c' | 'C') if control => Some(Input::Quit),
                    KeyCode::Char('l' | 'L') if control => Some(Input::Redraw),
                    KeyCode::Char('q' | 'Q') | KeyCode::Esc => Some(Input::Quit),
                    KeyCode::Char(c) if !control => Some(Input::Key(c)),
                    _ => None,
                }
            }
            Event::Resize(..) => Some(Input::Redraw),
            _ => None,
        })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Gives the terminal back, if a [`Screen`] holds it.
fn restore() {
    if OPEN.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), EnableLineWrap, Show, LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}
