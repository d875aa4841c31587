//! Personal data is kept only as long as the configured retention says.

use crate::helpers::*;
use chrono::{Duration, Utc};
use rpec_notify::worker::{sweep_once, Shared, Swept};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enquiries_registrations_and_sent_emails_are_cleared_after_their_retention() {
    let now = Utc::now();
    let app = spawn_app_with(Options::at(&now.to_rfc3339())).await;
    app.publish(&contact_event(
        json!({"region": "london", "name": "Avery Keeps", "email": "avery@school.example.org"}),
    ))
    .await;
    let start = now + Duration::days(2);
    app.publish(&session_event(
        "session.scheduled",
        "s-ret",
        &start.to_rfc3339(),
        &(start + Duration::hours(1)).to_rfc3339(),
        None,
    ))
    .await;
    app.publish(&registration_event(
        "ret-1",
        "s-ret",
        "robin@school.example.org",
    ))
    .await;
    app.handled(3).await;
    app.mails(3).await;
    app.all_sent().await;
    let shared = Shared::load(app.settings.clone(), app.clock.clone())
        .await
        .unwrap();

    // Within every retention period: nothing goes.
    app.clock.set(now + Duration::days(29));
    assert_eq!(sweep_once(&shared).await.unwrap(), Swept::default());

    // 30 days after sending and after the session ended: emails and registrations go.
    app.clock.set(now + Duration::days(33));
    let swept = sweep_once(&shared).await.unwrap();
    assert_eq!(
        (swept.enquiries, swept.registrations, swept.emails),
        (0, 1, 3)
    );
    let registrant: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT name, email FROM registrations")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(registrant, [(None, None)]);

    // 90 days after it arrived: the enquiry is anonymised; its id and routing stay.
    app.clock.set(now + Duration::days(91));
    assert_eq!(sweep_once(&shared).await.unwrap().enquiries, 1);
    let row: (String, Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT region, name, email, message FROM enquiries")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(row, ("london".to_string(), None, None, None));
    shared.pool.close().await;
    app.stop().await;
}
